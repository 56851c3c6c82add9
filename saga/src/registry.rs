//! The definitions an orchestrator runs, with their data types erased so that sagas
//! of many types (and versions) share one orchestrator.

use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

use crate::definition::Saga;
use crate::definition::hooks::Hook;
use crate::state::SagaState;
use crate::transition::{Phase, Plan};

/// A definition as the engine uses it: data as JSON, deserialized into the saga's
/// type only to build a command's payload, to check an event's payload, and for the
/// end hooks.
pub(crate) trait Definition: Send + Sync {
    fn name(&self) -> &str;
    fn version(&self) -> i32;
    fn plan(&self) -> Plan<'_>;
    fn command_name(&self, step: usize, phase: Phase) -> Option<&str>;
    fn payload(
        &self,
        step: usize,
        phase: Phase,
        data: &serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Error>;
    fn command_named(&self, name: &str) -> Option<(usize, Phase)>;
    fn command_names(&self) -> Vec<&str>;
    /// The event the wait step `step` waits for.
    fn waits_for(&self, step: usize) -> Option<&str>;
    /// The wait step that waits for `event`.
    fn step_waiting_for(&self, event: &str) -> Option<usize>;
    /// Every event a step of this definition waits for.
    fn events(&self) -> Vec<&str>;
    /// Whether `data` still fits the saga's data type.
    fn fits(&self, data: &serde_json::Value) -> Result<(), serde_json::Error>;
    /// Whether any step waits for an event.
    fn has_events(&self) -> bool;
    /// The hook that runs when a saga ends in `state`.
    fn hook(&self, state: SagaState) -> Option<&Hook>;
    /// How long one try of an end hook may take.
    fn hook_time_limit(&self) -> std::time::Duration;
}

impl<D: DeserializeOwned + Send + Sync + 'static> Definition for Saga<D> {
    fn name(&self) -> &str {
        Saga::name(self)
    }

    fn version(&self) -> i32 {
        Saga::version(self)
    }

    fn plan(&self) -> Plan<'_> {
        Saga::plan(self)
    }

    fn command_name(&self, step: usize, phase: Phase) -> Option<&str> {
        self.steps().get(step)?.command_name(phase)
    }

    fn payload(
        &self,
        step: usize,
        phase: Phase,
        data: &serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Error> {
        let data: D = serde_json::from_value(data.clone())?;
        // A cancel carries its action's payload: the participant decodes it the same way.
        let phase = match phase {
            Phase::Cancel => Phase::Action,
            phase => phase,
        };
        match self.steps().get(step).and_then(|s| s.command(phase)) {
            Some(command) => command.payload(&data),
            None => Ok(serde_json::Value::Null),
        }
    }

    fn command_named(&self, name: &str) -> Option<(usize, Phase)> {
        Saga::command_named(self, name)
    }

    fn command_names(&self) -> Vec<&str> {
        self.steps()
            .iter()
            .flat_map(|s| {
                [Phase::Action, Phase::Compensation, Phase::Cancel]
                    .into_iter()
                    .filter_map(|phase| s.command_name(phase))
            })
            .collect()
    }

    fn waits_for(&self, step: usize) -> Option<&str> {
        self.steps().get(step)?.waits_for()
    }

    fn step_waiting_for(&self, event: &str) -> Option<usize> {
        Saga::step_waiting_for(self, event)
    }

    fn events(&self) -> Vec<&str> {
        self.steps().iter().filter_map(|s| s.waits_for()).collect()
    }

    fn fits(&self, data: &serde_json::Value) -> Result<(), serde_json::Error> {
        D::deserialize(data).map(|_| ())
    }

    fn has_events(&self) -> bool {
        self.steps().iter().any(|s| s.waits_for().is_some())
    }

    fn hook(&self, state: SagaState) -> Option<&Hook> {
        match state {
            SagaState::Completed => self.hooks.completed.as_ref(),
            SagaState::Compensated => self.hooks.compensated.as_ref(),
            SagaState::Failed => self.hooks.failed.as_ref(),
            _ => None,
        }
    }

    fn hook_time_limit(&self) -> std::time::Duration {
        self.hooks.time_limit
    }
}

/// The saga definitions an orchestrator knows, by type and version.
#[derive(Default, Clone)]
pub struct Registry {
    definitions: HashMap<(String, i32), Arc<dyn Definition>>,
}

impl Registry {
    /// No definitions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition. Keep older versions registered while sagas started on them
    /// still run: a saga whose version is missing goes to `failed`.
    pub fn register<D: DeserializeOwned + Send + Sync + 'static>(mut self, saga: Saga<D>) -> Self {
        let key = (saga.name().to_owned(), saga.version());
        self.definitions.insert(key, Arc::new(saga));
        self
    }

    pub(crate) fn get(&self, saga_type: &str, version: i32) -> Option<Arc<dyn Definition>> {
        self.definitions
            .get(&(saga_type.to_owned(), version))
            .cloned()
    }

    /// The steps replies arrive under, `{command}.reply`, each once: what the
    /// orchestrator's consumer routes.
    pub fn reply_routes(&self) -> Vec<String> {
        let mut routes: Vec<String> = self
            .definitions
            .values()
            .flat_map(|d| {
                d.command_names()
                    .into_iter()
                    .map(|c| format!("{c}.reply"))
                    .collect::<Vec<_>>()
            })
            .collect();
        routes.sort();
        routes.dedup();
        routes
    }

    /// The events the registered definitions wait for, each once: what the
    /// orchestrator's consumer takes as signals.
    pub fn events(&self) -> Vec<String> {
        let mut events: Vec<String> = self
            .definitions
            .values()
            .flat_map(|d| {
                d.events()
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        events.sort();
        events.dedup();
        events
    }

    /// The saga types registered, each once.
    pub fn saga_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.definitions.keys().map(|(t, _)| t.clone()).collect();
        types.sort();
        types.dedup();
        types
    }
}
