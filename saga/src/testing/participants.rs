//! The test kit's participants: async functions by command name, answered the way
//! the participant helper answers (an action once, a compensation that comes first
//! fences its action, a cancel answers with its action's outcome).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How a participant answers a command in a test.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// It took effect; the result is merged into the saga's data.
    Done(serde_json::Value),
    /// It refuses, for this reason (a business answer).
    Declined(String),
    /// It never answers (down, stuck, lost): the saga's deadline will pass.
    Silent,
    /// It answers this way after this long on the test's clock.
    After(Duration, Box<Answer>),
}

impl Answer {
    /// Took effect, with `result` merged into the saga's data.
    pub fn done<R: Serialize>(result: R) -> Self {
        Answer::Done(serde_json::to_value(result).unwrap_or(serde_json::Value::Null))
    }

    /// Refused, for `reason`.
    pub fn declined(reason: impl Into<String>) -> Self {
        Answer::Declined(reason.into())
    }

    /// This answer, `delay` later on the test's clock.
    pub fn after(delay: Duration, answer: Answer) -> Self {
        Answer::After(delay, Box::new(answer))
    }
}

type Respond = Box<dyn Fn(serde_json::Value) -> Pin<Box<dyn Future<Output = Answer>>>>;

/// The participants of a test, by the command they handle.
#[derive(Default)]
pub(super) struct Participants {
    by_command: HashMap<String, Respond>,
}

impl Participants {
    pub(super) fn add<T, F, Fut>(&mut self, name: &str, participant: F)
    where
        T: DeserializeOwned + 'static,
        F: Fn(T) -> Fut + 'static,
        Fut: Future<Output = Answer> + 'static,
    {
        let command = name.to_owned();
        let respond: Respond = Box::new(move |payload| {
            let decoded = serde_json::from_value::<T>(payload).unwrap_or_else(|error| {
                panic!("the test's participant for {command} cannot read its payload: {error}")
            });
            Box::pin(participant(decoded))
        });
        self.by_command.insert(name.to_owned(), respond);
    }

    /// What the participant of `name` answers to `payload`; silent if none handles it.
    pub(super) async fn call(&self, name: &str, payload: serde_json::Value) -> Answer {
        match self.by_command.get(name) {
            Some(respond) => respond(payload).await,
            None => Answer::Silent,
        }
    }
}

/// What became of a step's action at its participant.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ActionState {
    Done(serde_json::Value),
    Declined(String),
    /// A compensation or cancel came first: the action will never take effect.
    Fenced,
}

/// The reply a participant gives for a fenced action.
pub(super) const FENCED: &str = "fenced: its compensation came first";
