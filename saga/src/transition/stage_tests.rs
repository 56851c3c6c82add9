//! Parallel groups and waits: every combination of replies and timeouts in a group of
//! three, in every order they can arrive, and a wait's event, timeout and abort.
//!
//! The plan: step 0 alone (compensable), steps 1 to 3 a parallel group, step 4 a wait,
//! step 5 alone.

use std::time::Duration;

use super::*;
use SagaState::*;

const GROUP: Group = Group { first: 1, len: 3 };

fn in_group(timeout_secs: u64) -> Shape {
    Shape {
        work: Work::Action { compensable: true },
        group: Some(GROUP),
        timeout: Duration::from_secs(timeout_secs),
    }
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn steps() -> [Shape; 6] {
    [
        Shape::action(true, secs(10)),
        in_group(30),
        in_group(20),
        in_group(40),
        Shape::wait(secs(3600)),
        Shape::action(true, secs(10)),
    ]
}

fn moved(
    plan: &Plan<'_>,
    at: Position,
    event: Event<'_>,
) -> Option<(Position, Vec<Command>, Deadline, bool)> {
    match transition(plan, at, &event) {
        Next::Moved {
            to,
            send,
            deadline,
            merge_result,
            ..
        } => Some((to, send, deadline, merge_result)),
        Next::Ignored(_) => None,
    }
}

fn action(step: usize) -> Command {
    Command {
        step,
        phase: Phase::Action,
    }
}

fn compensation(step: usize) -> Command {
    Command {
        step,
        phase: Phase::Compensation,
    }
}

fn reply(step: usize, outcome: Outcome<'static>) -> Event<'static> {
    Event::Reply {
        step,
        phase: Phase::Action,
        outcome,
    }
}

/// The saga once step 0 succeeded: the group's three actions out at once.
fn group_started(plan: &Plan<'_>) -> Position {
    let (p, send) = match transition(plan, Position::start(), &Event::Start) {
        Next::Moved { to, send, .. } => (to, send),
        ignored => panic!("{ignored:?}"),
    };
    assert_eq!(send, vec![action(0)]);
    let (p, send, deadline, merge) = moved(plan, p, reply(0, Outcome::Succeeded)).unwrap();
    assert_eq!((p.state, p.step, p.done), (Running, 1, 0));
    assert_eq!(send, vec![action(1), action(2), action(3)]);
    assert_eq!(
        deadline,
        Deadline::StageStarts(secs(20)),
        "the shortest of the three"
    );
    assert!(merge);
    p
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Succeeds,
    Declines,
    Silent,
}

fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, *first);
            all.push(tail);
        }
    }
    all
}

/// Runs compensations to the end, each succeeding; returns the steps compensated, in
/// the order their compensations were sent, starting with `first`.
fn compensate_to_the_end(plan: &Plan<'_>, mut p: Position, first: Vec<Command>) -> Vec<usize> {
    let mut order = Vec::new();
    let mut send = first;
    while p.state == Compensating {
        assert_eq!(send.len(), 1, "one compensation at a time");
        let step = send[0].step;
        assert_eq!(send[0], compensation(step));
        order.push(step);
        let ok = Event::Reply {
            step,
            phase: Phase::Compensation,
            outcome: Outcome::Succeeded,
        };
        let (to, next, _, _) = moved(plan, p, ok).expect("a compensation's reply moves the saga");
        p = to;
        send = next;
    }
    assert_eq!(p.state, Compensated);
    assert!(send.is_empty());
    order
}

#[test]
fn every_combination_of_answers_in_a_group_of_three_ends_as_the_rules_say() {
    let steps = steps();
    let plan = Plan {
        steps: &steps,
        compensation_attempts: 3,
    };
    let answers = [Answer::Succeeds, Answer::Declines, Answer::Silent];
    let mut cases = 0;
    for a in answers {
        for b in answers {
            for c in answers {
                let answer = [a, b, c];
                let answering: Vec<usize> = (1..=3)
                    .filter(|s| answer[s - 1] != Answer::Silent)
                    .collect();
                for order in permutations(&answering) {
                    cases += 1;
                    check(&plan, answer, &order);
                }
            }
        }
    }
    assert_eq!(
        cases,
        1 + 3 * 2 + 3 * 2 * 4 + 6 * 8,
        "every order of every combination"
    );
}

/// One combination, its answers arriving in `order`, then the group's deadline if it
/// is still running.
fn check(plan: &Plan<'_>, answer: [Answer; 3], order: &[usize]) {
    let case = format!("{answer:?} in order {order:?}");
    let mut p = group_started(plan);
    let mut first_declined = None;
    let mut compensations = None;
    for &step in order {
        let outcome = match answer[step - 1] {
            Answer::Declines => Outcome::Failed("declined"),
            _ => Outcome::Succeeded,
        };
        let next = moved(plan, p, reply(step, outcome));
        if compensations.is_some() {
            assert!(next.is_none(), "{case}: a late answer changes nothing");
            continue;
        }
        let (to, send, deadline, merge) = next.expect("the group takes every first answer");
        if outcome == Outcome::Succeeded {
            assert!(merge, "{case}: each result is merged");
            if to.state == Running && to.step == 1 {
                assert!(send.is_empty(), "{case}: nothing more to send yet");
                let remaining = (1..=3).filter(|s| to.done & GROUP.bit(*s) == 0);
                let shortest = remaining.map(|s| plan.timeout(s)).min().unwrap();
                assert_eq!(deadline, Deadline::SinceStageStart(shortest), "{case}");
            }
        } else {
            first_declined = Some(step);
            assert_eq!(to.state, Compensating, "{case}");
            assert_eq!(to.declined, GROUP.bit(step), "{case}");
            compensations = Some(send.clone());
        }
        p = to;
    }
    let all_succeeded = answer.iter().all(|a| *a == Answer::Succeeds);
    if all_succeeded {
        assert_eq!((p.state, p.step), (Running, 4), "{case}: on to the wait");
        return;
    }
    let first = match compensations {
        Some(first) => first,
        None => {
            // Nobody declined, somebody is silent: the group's deadline passes.
            assert_eq!((p.state, p.step), (Running, 1), "{case}");
            let timeout = Event::Timeout {
                step: 1,
                phase: Phase::Action,
            };
            let (to, send, _, _) = moved(plan, p, timeout).expect("the group times out");
            p = to;
            send
        }
    };
    let undone = compensate_to_the_end(plan, p, first);
    let expected: Vec<usize> = [3, 2, 1, 0]
        .into_iter()
        .filter(|s| Some(*s) != first_declined)
        .collect();
    assert_eq!(
        undone, expected,
        "{case}: every step that may have taken effect, last first"
    );
}

#[test]
fn an_abort_of_a_running_group_compensates_all_of_it_then_the_step_before() {
    let steps = steps();
    let plan = Plan {
        steps: &steps,
        compensation_attempts: 3,
    };
    let p = group_started(&plan);
    let (p, _, _, _) = moved(&plan, p, reply(2, Outcome::Succeeded)).unwrap();
    let (p, send, _, _) = moved(&plan, p, Event::Abort { reason: "fraud" }).unwrap();
    assert_eq!(compensate_to_the_end(&plan, p, send), [3, 2, 1, 0]);
}

#[test]
fn a_declined_step_stays_declined_across_a_failed_compensation_and_a_retry() {
    let steps = steps();
    let plan = Plan {
        steps: &steps,
        compensation_attempts: 1,
    };
    let p = group_started(&plan);
    let (p, send, _, _) = moved(&plan, p, reply(3, Outcome::Failed("no stock"))).unwrap();
    assert_eq!(send, vec![compensation(2)]);
    let failed = Event::Reply {
        step: 2,
        phase: Phase::Compensation,
        outcome: Outcome::Failed("down"),
    };
    let (p, send, deadline, _) = moved(&plan, p, failed).unwrap();
    assert_eq!((p.state, send, deadline), (Failed, vec![], Deadline::None));
    let (p, send, _, _) = moved(&plan, p, Event::Retry).unwrap();
    assert_eq!(
        (p.state, p.step, p.declined),
        (Compensating, 2, GROUP.bit(3))
    );
    assert_eq!(compensate_to_the_end(&plan, p, send), [2, 1, 0]);
}

#[test]
fn declined_steps_count_only_in_their_own_group() {
    // Two groups in a row: a decline in the second must not skip a step of the first.
    let first = Group { first: 0, len: 2 };
    let second = Group { first: 2, len: 2 };
    let shape = |group| Shape {
        work: Work::Action { compensable: true },
        group: Some(group),
        timeout: secs(5),
    };
    let steps = [shape(first), shape(first), shape(second), shape(second)];
    let plan = Plan {
        steps: &steps,
        compensation_attempts: 3,
    };
    let running = Position {
        state: Running,
        step: 2,
        ..Position::default()
    };
    // Step 2 declines (bit 0 of the second group, as step 0 is bit 0 of the first).
    let (p, send, _, _) = moved(&plan, running, reply(2, Outcome::Failed("no"))).unwrap();
    assert_eq!(compensate_to_the_end(&plan, p, send), [3, 1, 0]);
}

#[test]
fn a_wait_moves_on_with_its_event_and_compensates_at_its_deadline_or_an_abort() {
    let steps = steps();
    let plan = Plan {
        steps: &steps,
        compensation_attempts: 3,
    };
    let waiting = Position {
        state: Running,
        step: 4,
        ..Position::default()
    };
    let (p, send, deadline, merge) = moved(&plan, waiting, Event::Signal { step: 4 }).unwrap();
    assert_eq!((p.state, p.step, send), (Running, 5, vec![action(5)]));
    assert_eq!(deadline, Deadline::StageStarts(secs(10)));
    assert!(merge, "the event's payload is merged");

    let late = Event::Timeout {
        step: 4,
        phase: Phase::Action,
    };
    let (p, send, _, _) = moved(&plan, waiting, late).unwrap();
    assert_eq!(compensate_to_the_end(&plan, p, send), [3, 2, 1, 0]);
    let (p, send, _, _) = moved(&plan, waiting, Event::Abort { reason: "x" }).unwrap();
    assert_eq!(compensate_to_the_end(&plan, p, send), [3, 2, 1, 0]);

    // Events and replies a wait does not expect change nothing.
    assert!(moved(&plan, waiting, Event::Signal { step: 5 }).is_none());
    assert!(moved(&plan, waiting, reply(4, Outcome::Succeeded)).is_none());
    let elsewhere = Position {
        state: Running,
        step: 5,
        ..Position::default()
    };
    assert!(moved(&plan, elsewhere, Event::Signal { step: 4 }).is_none());
    let compensating = Position {
        state: Compensating,
        step: 0,
        attempts: 1,
        ..Position::default()
    };
    assert!(moved(&plan, compensating, Event::Signal { step: 4 }).is_none());
}

#[test]
fn a_saga_that_begins_with_a_wait_sends_nothing_and_has_a_deadline() {
    let steps = [Shape::wait(secs(60)), Shape::action(false, secs(5))];
    let plan = Plan {
        steps: &steps,
        compensation_attempts: 3,
    };
    let (p, send, deadline, _) = moved(&plan, Position::start(), Event::Start).unwrap();
    assert_eq!((p.state, p.step, send), (Running, 0, vec![]));
    assert_eq!(deadline, Deadline::StageStarts(secs(60)));
    // Nothing to undo before it: its timeout compensates nothing.
    let late = Event::Timeout {
        step: 0,
        phase: Phase::Action,
    };
    let (p, send, deadline, _) = moved(&plan, p, late).unwrap();
    assert_eq!(
        (p.state, send, deadline),
        (Compensated, vec![], Deadline::None)
    );
}

#[test]
fn a_retry_of_a_saga_failed_at_a_wait_or_a_running_group_undoes_what_may_have_run() {
    // Failed while it ran: its definition was missing, then registered again.
    let steps = steps();
    let plan = Plan {
        steps: &steps,
        compensation_attempts: 3,
    };
    let at_wait = Position {
        state: Failed,
        step: 4,
        ..Position::default()
    };
    let (p, send, _, _) = moved(&plan, at_wait, Event::Retry).expect("retried");
    assert_eq!(compensate_to_the_end(&plan, p, send), [3, 2, 1, 0]);
    let in_group = Position {
        state: Failed,
        step: 1,
        done: GROUP.bit(2),
        ..Position::default()
    };
    let (p, send, _, _) = moved(&plan, in_group, Event::Retry).expect("retried");
    assert_eq!(compensate_to_the_end(&plan, p, send), [3, 2, 1, 0]);
    // Failed while compensating the group's first step: resumes there.
    let compensating_first = Position {
        state: Failed,
        step: 1,
        attempts: 3,
        ..Position::default()
    };
    let (p, send, _, _) = moved(&plan, compensating_first, Event::Retry).expect("retried");
    assert_eq!(compensate_to_the_end(&plan, p, send), [1, 0]);
}
