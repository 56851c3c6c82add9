//! Every state against every event, on the order example: reserve (compensable),
//! charge (compensable), ship (not compensable).

use std::time::Duration;

use super::*;
use SagaState::*;

const SECOND: Duration = Duration::from_secs(1);

const ORDER_STEPS: [Shape; 3] = [
    Shape::action(true, SECOND),
    Shape::action(true, SECOND),
    Shape::action(false, SECOND),
];

const ORDER: Plan<'static> = Plan {
    steps: &ORDER_STEPS,
    compensation_attempts: 3,
};

fn at(state: SagaState, step: usize, attempts: u32) -> Position {
    Position {
        state,
        step,
        attempts,
        ..Position::default()
    }
}

fn reply(step: usize, phase: Phase, outcome: Outcome<'static>) -> Event<'static> {
    Event::Reply {
        step,
        phase,
        outcome,
    }
}

fn ok(step: usize, phase: Phase) -> Event<'static> {
    reply(step, phase, Outcome::Succeeded)
}

fn failed(step: usize, phase: Phase) -> Event<'static> {
    reply(step, phase, Outcome::Failed("declined"))
}

/// The position reached and the command sent (at most one on this plan), or why
/// the event was ignored.
fn step(
    position: Position,
    event: Event<'static>,
) -> Result<(Position, Option<Command>), &'static str> {
    match transition(&ORDER, position, &event) {
        Next::Moved { to, send, .. } => {
            assert!(send.len() <= 1, "one command at a time: {send:?}");
            Ok((to, send.first().copied()))
        }
        Next::Ignored(why) => Err(why),
    }
}

fn send(step: usize, phase: Phase) -> Option<Command> {
    Some(Command { step, phase })
}

use Phase::{Action, Cancel, Compensation};

#[test]
fn the_happy_path_runs_every_step_in_order_then_completes() {
    let (p, c) = step(Position::start(), Event::Start).unwrap();
    assert_eq!((p, c), (at(Running, 0, 0), send(0, Action)));
    let (p, c) = step(p, ok(0, Action)).unwrap();
    assert_eq!((p, c), (at(Running, 1, 0), send(1, Action)));
    let (p, c) = step(p, ok(1, Action)).unwrap();
    assert_eq!((p, c), (at(Running, 2, 0), send(2, Action)));
    let (p, c) = step(p, ok(2, Action)).unwrap();
    assert_eq!((p.state, c), (Completed, None));
}

#[test]
fn a_successful_action_merges_its_result() {
    let next = transition(&ORDER, at(Running, 0, 0), &ok(0, Action));
    assert!(matches!(
        next,
        Next::Moved {
            merge_result: true,
            ..
        }
    ));
    let next = transition(&ORDER, at(Running, 2, 0), &ok(2, Action));
    assert!(
        matches!(
            next,
            Next::Moved {
                merge_result: true,
                ..
            }
        ),
        "the last step's too"
    );
}

#[test]
fn a_failed_step_compensates_the_completed_ones_in_reverse_not_itself() {
    // The first step fails: nothing completed, nothing to undo.
    let (p, c) = step(at(Running, 0, 0), failed(0, Action)).unwrap();
    assert_eq!((p.state, c), (Compensated, None));
    // The second fails: only the first is compensated.
    let (p, c) = step(at(Running, 1, 0), failed(1, Action)).unwrap();
    assert_eq!((p, c), (at(Compensating, 0, 1), send(0, Compensation)));
    // The third fails: the second, then the first.
    let (p, c) = step(at(Running, 2, 0), failed(2, Action)).unwrap();
    assert_eq!((p, c), (at(Compensating, 1, 1), send(1, Compensation)));
    let (p, c) = step(p, ok(1, Compensation)).unwrap();
    assert_eq!((p, c), (at(Compensating, 0, 1), send(0, Compensation)));
    let (p, c) = step(p, ok(0, Compensation)).unwrap();
    assert_eq!((p.state, c), (Compensated, None));
}

#[test]
fn the_failure_reason_is_kept() {
    let next = transition(&ORDER, at(Running, 1, 0), &failed(1, Action));
    assert!(matches!(next, Next::Moved { error: Some(ref e), .. } if e == "declined"));
}

#[test]
fn a_timed_out_step_is_compensated_itself_because_its_outcome_is_unknown() {
    let (p, c) = step(
        at(Running, 1, 0),
        Event::Timeout {
            step: 1,
            phase: Action,
        },
    )
    .unwrap();
    assert_eq!((p, c), (at(Compensating, 1, 1), send(1, Compensation)));
}

fn timeout(step: usize, phase: Phase) -> Event<'static> {
    Event::Timeout { step, phase }
}

#[test]
fn a_timed_out_step_without_a_compensation_is_cancelled_and_its_answer_decides() {
    // Shipping cannot be undone: rather than undo the steps before it while it may
    // still ship, the orchestrator asks for its outcome, fencing it if it never ran.
    let (p, c) = step(at(Running, 2, 0), timeout(2, Action)).unwrap();
    assert_eq!((p, c), (at(Running, 2, 1), send(2, Cancel)));
    // Fenced (or declined): it took no effect, so the steps before it are undone.
    let (p2, c2) = step(p, failed(2, Cancel)).unwrap();
    assert_eq!((p2, c2), (at(Compensating, 1, 1), send(1, Compensation)));
    // Too late to cancel: it shipped, so the saga completes with its result.
    let next = transition(&ORDER, p, &ok(2, Cancel));
    assert!(matches!(
        next,
        Next::Moved { to, ref send, merge_result: true, .. } if to.state == Completed && send.is_empty()
    ));
    // The late action's own reply says the same and counts as well.
    assert_eq!(step(p, ok(2, Action)).unwrap().0.state, Completed);
    // Unanswered cancels are sent again, then the saga fails: its outcome is unknown.
    let (p, c) = step(p, timeout(2, Action)).unwrap();
    assert_eq!((p, c), (at(Running, 2, 2), send(2, Cancel)));
    let (p, _) = step(p, timeout(2, Action)).unwrap();
    let next = transition(&ORDER, p, &timeout(2, Action));
    assert!(matches!(
        next,
        Next::Moved { to, ref send, error: Some(ref e), .. }
            if to.state == Failed && e.contains("unknown") && send.is_empty()
    ));
    // An operator's retry cancels again.
    let (p, c) = step(at(Failed, 2, 3), Event::Retry).unwrap();
    assert_eq!((p, c), (at(Running, 2, 1), send(2, Cancel)));
    // An operator's abort of that step cancels it too.
    let (p, c) = step(at(Running, 2, 0), Event::Abort { reason: "x" }).unwrap();
    assert_eq!((p, c), (at(Running, 2, 1), send(2, Cancel)));
}

#[test]
fn an_abort_compensates_the_step_in_hand_and_those_before() {
    let (p, c) = step(at(Running, 1, 0), Event::Abort { reason: "fraud" }).unwrap();
    assert_eq!((p, c), (at(Compensating, 1, 1), send(1, Compensation)));
    let (p, c) = step(Position::start(), Event::Abort { reason: "fraud" }).unwrap();
    assert_eq!((p.state, c), (Compensated, None));
    for state in [Compensating, Completed, Compensated, Failed] {
        assert!(
            step(at(state, 1, 1), Event::Abort { reason: "x" }).is_err(),
            "{state}"
        );
    }
}

#[test]
fn a_failing_compensation_is_tried_again_then_the_saga_fails_never_compensated() {
    let (p, c) = step(at(Compensating, 0, 1), failed(0, Compensation)).unwrap();
    assert_eq!((p, c), (at(Compensating, 0, 2), send(0, Compensation)));
    let (p, c) = step(
        p,
        Event::Timeout {
            step: 0,
            phase: Compensation,
        },
    )
    .unwrap();
    assert_eq!((p, c), (at(Compensating, 0, 3), send(0, Compensation)));
    let next = transition(&ORDER, p, &failed(0, Compensation));
    let Next::Moved {
        to, send, error, ..
    } = next
    else {
        panic!("moved")
    };
    assert_eq!((to.state, send), (Failed, vec![]));
    assert!(error.unwrap().contains("gave up after 3 attempts"));
}

#[test]
fn retry_resumes_a_failed_compensation_where_it_stopped() {
    let (p, c) = step(at(Failed, 1, 3), Event::Retry).unwrap();
    assert_eq!((p, c), (at(Compensating, 1, 1), send(1, Compensation)));
    let (p, c) = step(p, ok(1, Compensation)).unwrap();
    assert_eq!((p, c), (at(Compensating, 0, 1), send(0, Compensation)));
    for state in [Pending, Running, Compensating, Completed, Compensated] {
        assert!(step(at(state, 1, 1), Event::Retry).is_err(), "{state}");
    }
}

#[test]
fn replies_to_commands_not_in_hand_change_nothing() {
    // A late action reply after its step timed out and is being compensated.
    assert!(step(at(Compensating, 1, 1), ok(1, Action)).is_err());
    // A duplicate reply for a step already passed.
    assert!(step(at(Running, 2, 0), ok(1, Action)).is_err());
    // A reply for a step ahead of the saga, or beyond the definition.
    assert!(step(at(Running, 0, 0), ok(1, Action)).is_err());
    assert!(step(at(Running, 0, 0), ok(7, Action)).is_err());
    // A compensation reply while running, or for another step.
    assert!(step(at(Running, 1, 0), ok(0, Compensation)).is_err());
    assert!(step(at(Compensating, 0, 1), ok(1, Compensation)).is_err());
    // Anything after the end.
    for state in [Completed, Compensated, Failed] {
        for event in [ok(0, Action), failed(0, Compensation), ok(2, Action)] {
            assert!(step(at(state, 0, 1), event).is_err(), "{state} {event:?}");
        }
    }
    // Before the start.
    assert!(step(Position::start(), ok(0, Action)).is_err());
}

#[test]
fn stale_deadlines_and_second_starts_change_nothing() {
    assert!(
        step(
            at(Running, 2, 0),
            Event::Timeout {
                step: 1,
                phase: Action
            }
        )
        .is_err()
    );
    assert!(
        step(
            at(Compensating, 0, 1),
            Event::Timeout {
                step: 1,
                phase: Compensation
            }
        )
        .is_err()
    );
    assert!(
        step(
            at(Running, 1, 0),
            Event::Timeout {
                step: 1,
                phase: Compensation
            }
        )
        .is_err()
    );
    for state in [Completed, Compensated, Failed] {
        assert!(
            step(
                at(state, 0, 0),
                Event::Timeout {
                    step: 0,
                    phase: Action
                }
            )
            .is_err()
        );
    }
    for state in [Running, Compensating, Completed, Compensated, Failed] {
        assert!(step(at(state, 0, 0), Event::Start).is_err(), "{state}");
    }
}

#[test]
fn every_non_terminal_move_has_a_deadline_and_a_terminal_one_none() {
    let events = [
        Event::Start,
        ok(0, Action),
        ok(1, Action),
        ok(2, Action),
        failed(0, Action),
        failed(1, Action),
        failed(2, Action),
        ok(0, Compensation),
        ok(1, Compensation),
        failed(0, Compensation),
        failed(1, Compensation),
        ok(2, Cancel),
        failed(2, Cancel),
        Event::Timeout {
            step: 0,
            phase: Action,
        },
        Event::Timeout {
            step: 1,
            phase: Action,
        },
        Event::Timeout {
            step: 2,
            phase: Action,
        },
        Event::Timeout {
            step: 0,
            phase: Compensation,
        },
        Event::Timeout {
            step: 1,
            phase: Compensation,
        },
        Event::Abort { reason: "x" },
        Event::Retry,
    ];
    for state in SagaState::ALL {
        for s in 0..3 {
            for attempts in 1..=3 {
                for event in events {
                    if let Next::Moved {
                        to, send, deadline, ..
                    } = transition(&ORDER, at(state, s, attempts), &event)
                    {
                        assert_eq!(
                            to.state.is_terminal(),
                            deadline == Deadline::None,
                            "{state} step {s} attempt {attempts} {event:?} -> {to:?} {deadline:?}"
                        );
                        assert_eq!(
                            to.state.is_terminal(),
                            send.is_empty(),
                            "on this plan every running move sends: {state} {event:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_resent_command_waits_twice_as_long_as_the_last_up_to_eight_times_the_step() {
    let step = std::time::Duration::from_secs(3);
    let waits: Vec<u64> = (0..7)
        .map(|attempts| command_timeout(step, attempts).as_secs())
        .collect();
    assert_eq!(waits, [3, 3, 6, 12, 24, 24, 24]);
    assert_eq!(command_timeout(step, u32::MAX).as_secs(), 24);
}
