//! Test a saga definition without servers and without waiting: the same rules and
//! the same definition the orchestrator runs, participants as plain async functions,
//! and a clock the test moves.
//!
//! ```rust
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use serde_json::json;
//! use txoutbox_saga::testing::{Answer, SagaTest};
//! use txoutbox_saga::{Saga, SagaState};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { order_id: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let saga = Saga::<Order>::define("order", 1)
//!     .step("reserve")
//!     .action("inventory.reserve", |o| json!({ "order_id": o.order_id }))
//!     .compensate("inventory.release", |o| json!({ "order_id": o.order_id }))
//!     .step("charge")
//!     .action("payment.charge", |o| json!({ "order_id": o.order_id }))
//!     .compensate("payment.refund", |o| json!({ "order_id": o.order_id }))
//!     .timeout(Duration::from_secs(1800))
//!     .build()?;
//!
//! let mut test = SagaTest::new(saga);
//! test.on("inventory.reserve", async |_: serde_json::Value| Answer::done(json!({ "held": true })));
//! test.on("inventory.release", async |_: serde_json::Value| Answer::done(()));
//! test.on("payment.charge", async |_: serde_json::Value| Answer::Silent); // never answers
//! test.start("order-1", &Order { order_id: 1 }).await?;
//!
//! test.advance(Duration::from_secs(1800)).await; // half an hour, at once
//! assert_eq!(test.state("order-1"), Some(SagaState::Compensated));
//! // The silent charge's outcome is unknown, so it is compensated too (which fences
//! // it), then the reservation is released.
//! assert_eq!(
//!     test.sent_names("order-1"),
//!     ["inventory.reserve", "payment.charge", "payment.refund", "inventory.release"]
//! );
//! # Ok(()) }
//! ```
//!
//! Participants answer as the participant helper ([`SagaCommands`]) does: a
//! compensation of an action that never answered fences it (and succeeds, with
//! nothing to undo), as does one of a declined action; a cancel answers with its
//! action's outcome. A command nobody handles is never answered. End hooks, which
//! need a database, are not run: [`SagaTest::ended`] says which would have run, with
//! the data and the reason it would have got.
//!
//! [`SagaCommands`]: crate::participant::SagaCommands

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::definition::Saga;
use crate::mover::{Brought, Line, Offer, Outgoing, Planned, Record, offer, plan_move};
use crate::state::SagaState;
use crate::transition::{Deadline, Event, Outcome, Phase, Position};

mod participants;

pub use participants::Answer;
use participants::{ActionState, FENCED, Participants};

/// A command the saga sent, and when, on the test's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Time since the test began.
    pub at: Duration,
    /// The command's name.
    pub name: String,
    /// The step it is for.
    pub step: usize,
    /// Its action, compensation or cancel.
    pub phase: Phase,
    /// Which try of it.
    pub attempt: u32,
    /// Its payload, built from the saga's data.
    pub payload: serde_json::Value,
}

/// A line of the saga's history, as `saga_event` would hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryLine {
    /// Time since the test began.
    pub at: Duration,
    /// `started`, `command_sent`, `reply`, `signal`, `timeout`, `operator`.
    pub kind: String,
    /// The step it is about.
    pub step: Option<usize>,
    /// The state before and after, when the saga moved.
    pub from_state: Option<SagaState>,
    /// The state after.
    pub to_state: Option<SagaState>,
    /// A reply's outcome, why an event was ignored, the error.
    pub detail: Option<String>,
}

/// An event delivered to a saga under test, and what became of it, as `saga_signal`
/// would record it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// Time since the test began.
    pub at: Duration,
    /// The event's name.
    pub name: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// `taken by step N`, or why not; `None` while it is kept for its step.
    pub outcome: Option<String>,
}

/// How a saga ended: the end hook the orchestrator would have run in the move's
/// transaction, with the saga's data and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// `completed`, `compensated` or `failed`.
    pub state: SagaState,
    /// The saga's data at the end.
    pub data: serde_json::Value,
    /// Why it did not complete (empty when it did).
    pub why: String,
}

/// One saga under test.
struct Tested {
    record: Record,
    deadline: Option<Duration>,
    stage_started: Duration,
    last_error: Option<String>,
    sent: Vec<Sent>,
    history: Vec<HistoryLine>,
    events: Vec<Delivered>,
    /// What each step's action did at its participant.
    actions: HashMap<usize, ActionState>,
    ended: Option<Ending>,
}

/// An answer due later on the test's clock.
struct Due {
    at: Duration,
    saga_id: String,
    step: usize,
    phase: Phase,
    answer: Answer,
}

/// Runs sagas of one definition in memory, with participants as async functions and
/// a clock that moves only when the test says so.
pub struct SagaTest<D> {
    saga: Saga<D>,
    participants: Participants,
    now: Duration,
    sagas: HashMap<String, Tested>,
    later: Vec<Due>,
}

impl<D> SagaTest<D>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A test of `saga`, with no participant yet and the clock at zero.
    pub fn new(saga: Saga<D>) -> Self {
        Self {
            saga,
            participants: Participants::default(),
            now: Duration::ZERO,
            sagas: HashMap::new(),
            later: Vec::new(),
        }
    }

    /// Answers command `name` with `participant`, an `async fn(T) -> Answer` that
    /// gets the command's payload.
    pub fn on<T, F, Fut>(&mut self, name: &str, participant: F) -> &mut Self
    where
        T: DeserializeOwned + 'static,
        F: Fn(T) -> Fut + 'static,
        Fut: Future<Output = Answer> + 'static,
    {
        self.participants.add(name, participant);
        self
    }

    /// Starts saga `saga_id` with `data`, as [`start`](crate::start) does, and lets
    /// the participants answer what they answer at once.
    pub async fn start(&mut self, saga_id: &str, data: &D) -> Result<(), crate::Error> {
        if self.sagas.contains_key(saga_id) {
            return Err(crate::Error::AlreadyStarted(saga_id.to_owned()));
        }
        let record = Record {
            position: Position::start(),
            data: serde_json::to_value(data).map_err(crate::Error::Data)?,
            ending: None,
            end_attempts: 0,
        };
        self.sagas.insert(
            saga_id.to_owned(),
            Tested {
                record,
                deadline: None,
                stage_started: self.now,
                last_error: None,
                sent: Vec::new(),
                history: Vec::new(),
                events: Vec::new(),
                actions: HashMap::new(),
                ended: None,
            },
        );
        self.apply(saga_id, Event::Start, None).await
    }

    /// Delivers event `name` with `payload` to saga `saga_id` as
    /// [`signal`](crate::signal) does, and at once does what the orchestrator's next
    /// sweep would: the step that waits for it takes it, or it is kept for its step,
    /// or refused with the reason ([`SagaTest::events`] says which). Like `signal`,
    /// it answers `Kept` for a saga that runs, `Ignored` for one that has finished or
    /// is compensating, and `NotFound` for one that does not exist.
    pub async fn signal<P: Serialize>(
        &mut self,
        saga_id: &str,
        name: &str,
        payload: &P,
    ) -> Result<crate::Signaled, crate::Error> {
        let payload = serde_json::to_value(payload).map_err(crate::Error::Data)?;
        crate::signal::check_event(name, &payload)?;
        let now = self.now;
        let tested = self
            .sagas
            .get_mut(saga_id)
            .ok_or_else(|| crate::Error::NotFound(saga_id.to_owned()))?;
        tested.events.push(Delivered {
            at: now,
            name: name.to_owned(),
            payload,
            outcome: None,
        });
        let index = tested.events.len() - 1;
        let state = tested.record.position.state;
        if !matches!(state, SagaState::Pending | SagaState::Running) {
            let why = format!("ignored: the saga is {state}");
            self.settle(saga_id, index, &why);
            return Ok(crate::Signaled::Ignored(why));
        }
        self.settle_kept(saga_id).await?;
        Ok(crate::Signaled::Kept)
    }

    /// Every event delivered to the saga, oldest first, with what became of it.
    pub fn events(&self, saga_id: &str) -> &[Delivered] {
        self.sagas.get(saga_id).map_or(&[], |t| &t.events)
    }

    /// Offers the saga's kept events, oldest first, as the sweep does.
    async fn settle_kept(&mut self, saga_id: &str) -> Result<(), crate::Error> {
        let mut index = 0;
        while let Some(tested) = self.sagas.get(saga_id)
            && index < tested.events.len()
        {
            if tested.events[index].outcome.is_none() {
                let waiting = self.offer_one(saga_id, index).await?;
                self.take_for_wait(saga_id, waiting).await?;
            }
            index += 1;
        }
        Ok(())
    }

    /// A saga that moved to a wait takes the oldest kept event of its name, if one
    /// came early, trying the next of that name after one whose payload did not fit.
    async fn take_for_wait(
        &mut self,
        saga_id: &str,
        mut waiting: Option<String>,
    ) -> Result<(), crate::Error> {
        while let Some(event) = waiting.take() {
            let Some(index) = self.sagas.get(saga_id).and_then(|t| {
                t.events
                    .iter()
                    .position(|e| e.outcome.is_none() && e.name == event)
            }) else {
                break;
            };
            waiting = self.offer_one(saga_id, index).await?;
        }
        Ok(())
    }

    /// Offers event `index` to the saga by the engine's rules; returns the event the
    /// saga still waits for, when this one's payload did not fit.
    async fn offer_one(
        &mut self,
        saga_id: &str,
        index: usize,
    ) -> Result<Option<String>, crate::Error> {
        let Some(tested) = self.sagas.get(saga_id) else {
            return Ok(None);
        };
        let Delivered { name, payload, .. } = tested.events[index].clone();
        match offer(&self.saga, &tested.record, &name, &payload) {
            Offer::Keep => Ok(None),
            Offer::Refuse(why) | Offer::Ignore(why) => {
                self.settle(saga_id, index, &why);
                Ok(None)
            }
            Offer::Misfit(why) => {
                self.settle(saga_id, index, &why);
                Ok(Some(name))
            }
            Offer::Take(step) => {
                self.take(saga_id, index, step);
                Box::pin(self.apply(saga_id, Event::Signal { step }, Some(payload))).await?;
                Ok(None)
            }
        }
    }

    /// Records that event `index` was taken by `step` (the move's own history line
    /// says so).
    fn take(&mut self, saga_id: &str, index: usize, step: usize) {
        if let Some(tested) = self.sagas.get_mut(saga_id) {
            tested.events[index].outcome = Some(format!("taken by step {step}"));
        }
    }

    /// Records that event `index` was not taken, and why, in its record and in the
    /// saga's history.
    fn settle(&mut self, saga_id: &str, index: usize, outcome: &str) {
        let now = self.now;
        let Some(tested) = self.sagas.get_mut(saga_id) else {
            return;
        };
        let event = &mut tested.events[index];
        event.outcome = Some(outcome.to_owned());
        let line = HistoryLine {
            at: now,
            kind: "signal".into(),
            step: None,
            from_state: Some(tested.record.position.state),
            to_state: None,
            detail: Some(format!("event {}: {outcome}", event.name)),
        };
        tested.history.push(line);
    }

    /// Moves the clock on by `by`, delivering the answers that come due and firing
    /// the deadlines that pass, in time order, each at its own moment.
    pub async fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(at) = self.next_due().filter(|at| *at <= until) {
            self.now = self.now.max(at);
            self.fire_due().await;
        }
        self.now = until;
    }

    /// An operator's abort, as `outbox-relay saga abort` asks it.
    pub async fn abort(&mut self, saga_id: &str, reason: &str) -> Result<(), crate::Error> {
        self.apply(saga_id, Event::Abort { reason }, None).await
    }

    /// An operator's retry of a `failed` saga.
    pub async fn retry(&mut self, saga_id: &str) -> Result<(), crate::Error> {
        self.apply(saga_id, Event::Retry, None).await
    }

    /// The time since the test began.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The saga's state.
    pub fn state(&self, saga_id: &str) -> Option<SagaState> {
        Some(self.sagas.get(saga_id)?.record.position.state)
    }

    /// Where the saga is: state, step, tries, and a group's answered steps.
    pub fn position(&self, saga_id: &str) -> Option<Position> {
        Some(self.sagas.get(saga_id)?.record.position)
    }

    /// The saga's data, with every result and event payload merged in.
    pub fn data(&self, saga_id: &str) -> Option<D> {
        serde_json::from_value(self.sagas.get(saga_id)?.record.data.clone()).ok()
    }

    /// When the saga is next due, on the test's clock.
    pub fn deadline(&self, saga_id: &str) -> Option<Duration> {
        self.sagas.get(saga_id)?.deadline
    }

    /// The event the saga waits for, at a wait step.
    pub fn waiting_for(&self, saga_id: &str) -> Option<&str> {
        let tested = self.sagas.get(saga_id)?;
        let at = tested.record.position;
        match at.state {
            SagaState::Running => self.saga.steps().get(at.step)?.waits_for(),
            _ => None,
        }
    }

    /// Every command the saga sent, in order.
    pub fn sent(&self, saga_id: &str) -> &[Sent] {
        self.sagas.get(saga_id).map_or(&[], |t| &t.sent)
    }

    /// The names of the commands the saga sent, in order.
    pub fn sent_names(&self, saga_id: &str) -> Vec<&str> {
        self.sent(saga_id).iter().map(|s| s.name.as_str()).collect()
    }

    /// The saga's history, oldest first.
    pub fn history(&self, saga_id: &str) -> &[HistoryLine] {
        self.sagas.get(saga_id).map_or(&[], |t| &t.history)
    }

    /// How the saga ended, and the end hook that would have run.
    pub fn ended(&self, saga_id: &str) -> Option<&Ending> {
        self.sagas.get(saga_id)?.ended.as_ref()
    }

    fn next_due(&self) -> Option<Duration> {
        let deadlines = self.sagas.values().filter_map(|t| t.deadline);
        let answers = self.later.iter().map(|due| due.at);
        deadlines.chain(answers).min()
    }

    /// Delivers the answers and fires the deadlines due now, answers first.
    async fn fire_due(&mut self) {
        let now = self.now;
        let (due, later): (Vec<Due>, Vec<Due>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|d| d.at <= now);
        self.later = later;
        for due in due {
            self.deliver(&due.saga_id, due.step, due.phase, due.answer)
                .await;
        }
        let mut timed_out: Vec<String> = self
            .sagas
            .iter()
            .filter(|(_, t)| t.deadline.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        timed_out.sort();
        for saga_id in timed_out {
            let at = self.sagas[&saga_id].record.position;
            let phase = match at.state {
                SagaState::Compensating => Phase::Compensation,
                _ => Phase::Action,
            };
            let event = Event::Timeout {
                step: at.step,
                phase,
            };
            if let Err(error) = self.apply(&saga_id, event, None).await {
                self.fail_unmovable(&saga_id, &error);
            }
        }
    }

    /// As the sweep does with a saga whose timeout cannot be applied: `failed`, with
    /// the reason, and nothing due on it any more.
    fn fail_unmovable(&mut self, saga_id: &str, error: &crate::Error) {
        let now = self.now;
        let Some(tested) = self.sagas.get_mut(saga_id) else {
            return;
        };
        let from = tested.record.position.state;
        let reason = format!("the orchestrator could not move it: {error}");
        if !from.is_terminal() {
            tested.record.position.state = SagaState::Failed;
        }
        tested.deadline = None;
        tested.last_error = Some(reason.clone());
        tested.history.push(HistoryLine {
            at: now,
            kind: "unmovable".into(),
            step: None,
            from_state: Some(from),
            to_state: Some(tested.record.position.state),
            detail: Some(reason),
        });
    }

    /// Applies one event the way the orchestrator does, then delivers the commands
    /// it sent.
    async fn apply(
        &mut self,
        saga_id: &str,
        event: Event<'_>,
        result: Option<serde_json::Value>,
    ) -> Result<(), crate::Error> {
        let tested = self
            .sagas
            .get_mut(saga_id)
            .ok_or_else(|| crate::Error::NotFound(saga_id.to_owned()))?;
        let brought = Brought {
            message_id: None,
            result: result.as_ref(),
        };
        let now = self.now;
        let mv = match plan_move(&self.saga, &tested.record, &event, brought)? {
            Planned::Ignored(_, line) => {
                tested.history.push(history_line(now, &line));
                return Ok(());
            }
            Planned::Moved(mv) => mv,
        };
        tested.history.push(history_line(now, &mv.line));
        tested.record.position = mv.to;
        tested.record.data = mv.data.clone();
        if mv.error.is_some() {
            tested.last_error = mv.error.clone();
        }
        tested.deadline = match mv.deadline {
            Deadline::None => None,
            Deadline::StageStarts(d) => {
                tested.stage_started = now;
                Some(now + d)
            }
            Deadline::SinceStageStart(d) => Some(tested.stage_started + d),
            Deadline::FromNow(d) => Some(now + d),
        };
        if mv.to.state.is_terminal() {
            tested.ended = Some(Ending {
                state: mv.to.state,
                data: mv.data.clone(),
                why: tested.last_error.clone().unwrap_or_default(),
            });
        }
        let mut deliveries = Vec::new();
        for out in &mv.send {
            tested.sent.push(Sent {
                at: now,
                name: out.name.clone(),
                step: out.command.step,
                phase: out.command.phase,
                attempt: out.attempt,
                payload: out.payload.clone(),
            });
            tested.history.push(HistoryLine {
                at: now,
                kind: "command_sent".into(),
                step: Some(out.command.step),
                from_state: None,
                to_state: None,
                detail: Some(format!("{} (attempt {})", out.name, out.attempt)),
            });
            deliveries.push(out.clone());
        }
        if mv.to.state.is_terminal() {
            let why = format!(
                "ignored: the saga ended {} before a step took it",
                mv.to.state
            );
            for event in tested.events.iter_mut().filter(|e| e.outcome.is_none()) {
                event.outcome = Some(why.clone());
            }
        }
        // A wait whose event came early takes it now.
        Box::pin(self.take_for_wait(saga_id, mv.waiting_for.clone())).await?;
        for out in deliveries {
            let answer = self.respond(saga_id, &out).await;
            self.deliver(saga_id, out.command.step, out.command.phase, answer)
                .await;
        }
        Ok(())
    }

    /// How the participant of `out` answers it, as the participant helper would.
    async fn respond(&mut self, saga_id: &str, out: &Outgoing) -> Answer {
        let step = out.command.step;
        let action = self
            .sagas
            .get(saga_id)
            .and_then(|t| t.actions.get(&step))
            .cloned();
        match (out.command.phase, action) {
            // An action runs once; a resent or late one gets the first answer.
            (Phase::Action, Some(state)) => answer_of(&state),
            (Phase::Action, None) => self.participants.call(&out.name, out.payload.clone()).await,
            // A compensation undoes only an action that took effect; one that has not
            // run is fenced, and there is nothing to undo.
            (Phase::Compensation, Some(ActionState::Done(_))) => {
                self.participants.call(&out.name, out.payload.clone()).await
            }
            (Phase::Compensation | Phase::Cancel, None) => {
                self.fence(saga_id, step);
                match out.command.phase {
                    Phase::Cancel => Answer::declined(FENCED),
                    _ => Answer::Done(serde_json::Value::Null),
                }
            }
            (Phase::Compensation, Some(_)) => Answer::Done(serde_json::Value::Null),
            // A cancel answers with its action's outcome.
            (Phase::Cancel, Some(state)) => answer_of(&state),
        }
    }

    fn fence(&mut self, saga_id: &str, step: usize) {
        if let Some(tested) = self.sagas.get_mut(saga_id) {
            tested.actions.insert(step, ActionState::Fenced);
        }
    }

    /// Applies a participant's answer: now, later, or never. An action's answer is
    /// its effect: unless it was fenced first, it is recorded as what the action did.
    async fn deliver(&mut self, saga_id: &str, step: usize, phase: Phase, answer: Answer) {
        let answer = match answer {
            Answer::Silent => return,
            Answer::After(delay, answer) => {
                self.later.push(Due {
                    at: self.now + delay,
                    saga_id: saga_id.to_owned(),
                    step,
                    phase,
                    answer: *answer,
                });
                return;
            }
            answer => answer,
        };
        let answer = match (phase, self.sagas.get_mut(saga_id)) {
            (Phase::Action, Some(tested)) => match tested.actions.get(&step) {
                Some(ActionState::Fenced) => Answer::declined(FENCED),
                Some(_) => answer,
                None => {
                    let state = match &answer {
                        Answer::Done(result) => ActionState::Done(result.clone()),
                        Answer::Declined(reason) => ActionState::Declined(reason.clone()),
                        _ => unreachable!("silent and later answers returned above"),
                    };
                    tested.actions.insert(step, state);
                    answer
                }
            },
            _ => answer,
        };
        let (outcome, result) = match &answer {
            Answer::Done(result) => (Outcome::Succeeded, Some(result.clone())),
            Answer::Declined(reason) => (Outcome::Failed(reason.as_str()), None),
            _ => return,
        };
        let event = Event::Reply {
            step,
            phase,
            outcome,
        };
        if let Err(error) = Box::pin(self.apply(saga_id, event, result)).await {
            // The orchestrator's consumer dead-letters a reply it cannot apply; the
            // saga stays where it was, and its deadline will come.
            let now = self.now;
            if let Some(tested) = self.sagas.get_mut(saga_id) {
                tested.history.push(HistoryLine {
                    at: now,
                    kind: "dead_lettered".into(),
                    step: Some(step),
                    from_state: None,
                    to_state: None,
                    detail: Some(format!("the reply could not be applied: {error}")),
                });
            }
        }
    }
}

/// The answer an action gave, given again.
fn answer_of(state: &ActionState) -> Answer {
    match state {
        ActionState::Done(result) => Answer::Done(result.clone()),
        ActionState::Declined(reason) => Answer::Declined(reason.clone()),
        ActionState::Fenced => Answer::declined(FENCED),
    }
}

fn history_line(at: Duration, line: &Line) -> HistoryLine {
    HistoryLine {
        at,
        kind: line.kind.to_owned(),
        step: line.step,
        from_state: line.from_state,
        to_state: line.to_state,
        detail: line.detail.clone(),
    }
}
