//! The definitions an orchestrator runs, with their data types erased so that sagas
//! of many types (and versions) share one orchestrator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::definition::Saga;
use crate::transition::{Phase, Plan};

/// A definition as the engine uses it: data as JSON, deserialized into the saga's
/// type only to build a command's payload.
pub(crate) trait Definition: Send + Sync {
    fn name(&self) -> &str;
    fn plan(&self) -> Plan<'_>;
    fn timeout(&self, step: usize) -> Duration;
    fn command_name(&self, step: usize, phase: Phase) -> Option<&str>;
    fn payload(
        &self,
        step: usize,
        phase: Phase,
        data: &serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Error>;
    fn command_named(&self, name: &str) -> Option<(usize, Phase)>;
    fn command_names(&self) -> Vec<&str>;
}

impl<D: DeserializeOwned + Send + Sync + 'static> Definition for Saga<D> {
    fn name(&self) -> &str {
        Saga::name(self)
    }

    fn plan(&self) -> Plan<'_> {
        Saga::plan(self)
    }

    fn timeout(&self, step: usize) -> Duration {
        self.steps()
            .get(step)
            .map_or(crate::DEFAULT_STEP_TIMEOUT, |s| s.timeout())
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

    /// The saga types registered, each once.
    pub fn saga_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.definitions.keys().map(|(t, _)| t.clone()).collect();
        types.sort();
        types.dedup();
        types
    }
}
