//! A saga's definition: its steps in order, each an action and maybe a compensation,
//! or a wait for an event; steps that run side by side in a parallel group; each
//! command's payload built from the saga's typed data; and what runs when it ends.
//!
//! ```rust
//! use std::time::Duration;
//! use txoutbox_saga::Saga;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { order_id: i64, amount_cents: i64, capture_id: Option<String> }
//!
//! let order_saga = Saga::<Order>::define("order_fulfillment", 1)
//!     .parallel(|p| p
//!         .step("reserve_inventory")
//!             .action("inventory.reserve", |o| serde_json::json!({ "order_id": o.order_id }))
//!             .compensate("inventory.release", |o| serde_json::json!({ "order_id": o.order_id }))
//!         .step("authorize_payment")
//!             .action("payment.authorize", |o| serde_json::json!({ "cents": o.amount_cents }))
//!             .compensate("payment.void", |o| serde_json::json!({ "order_id": o.order_id })))
//!     .step("await_capture")
//!         .wait_for("payment.captured")
//!         .timeout(Duration::from_secs(3 * 86_400))
//!     .step("schedule_shipping")
//!         .action("shipping.schedule", |o| serde_json::json!({ "order_id": o.order_id }))
//!     .build()?;
//! assert_eq!(order_saga.steps().len(), 4);
//! # Ok::<_, txoutbox_saga::DefinitionError>(())
//! ```
//!
//! A parallel group holds steps with actions and compensations, no waits and no
//! other groups: a group inside a group does not compile.
//!
//! ```compile_fail,E0599
//! # use txoutbox_saga::Saga;
//! Saga::<()>::define("nested", 1)
//!     .parallel(|p| p.parallel(|q| q.step("a").action("a", |_| 1)));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::transition::{Group, Phase, Plan, Shape};

mod builder;
pub(crate) mod hooks;
#[cfg(test)]
mod tests;

pub use builder::{Parallel, ParallelStep, SagaBuilder, StepBuilder};
pub(crate) use hooks::Hooks;
pub use hooks::{HOOK_TIME_LIMIT, OnCompleted, OnEnded};

/// A step waits this long for its reply (or its event) unless told otherwise.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Tries of one compensation before the saga is `failed`, unless told otherwise.
pub const DEFAULT_COMPENSATION_ATTEMPTS: u32 = 5;

type BuildPayload<D> =
    Arc<dyn Fn(&D) -> Result<serde_json::Value, serde_json::Error> + Send + Sync>;

/// A command the orchestrator sends: its name (the AMQP `type` and routing key the
/// participant handles) and how its payload is made from the saga's data.
pub struct CommandDef<D> {
    name: String,
    payload: BuildPayload<D>,
}

impl<D> CommandDef<D> {
    /// The command's name, sent as the message's step and routing key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command's payload for a saga whose data is `data`.
    pub fn payload(&self, data: &D) -> Result<serde_json::Value, serde_json::Error> {
        (self.payload)(data)
    }
}

impl<D> Clone for CommandDef<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            payload: Arc::clone(&self.payload),
        }
    }
}

impl<D> fmt::Debug for CommandDef<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandDef")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a step does: act through a participant, or wait for an event.
enum Work<D> {
    Act {
        action: CommandDef<D>,
        compensation: Option<CommandDef<D>>,
        cancel: Option<String>,
    },
    Wait {
        event: String,
    },
}

impl<D> Clone for Work<D> {
    fn clone(&self) -> Self {
        match self {
            Work::Act {
                action,
                compensation,
                cancel,
            } => Work::Act {
                action: action.clone(),
                compensation: compensation.clone(),
                cancel: cancel.clone(),
            },
            Work::Wait { event } => Work::Wait {
                event: event.clone(),
            },
        }
    }
}

/// One step: an action and maybe a compensation, or a wait for an event; and how
/// long it may go unanswered.
pub struct StepDef<D> {
    name: String,
    work: Work<D>,
    group: Option<Group>,
    timeout: Duration,
}

impl<D> StepDef<D> {
    /// The step's name, as the history shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command that does the step; `None` for a wait.
    pub fn action(&self) -> Option<&CommandDef<D>> {
        match &self.work {
            Work::Act { action, .. } => Some(action),
            Work::Wait { .. } => None,
        }
    }

    /// The command that undoes it, if the step can be undone.
    pub fn compensation(&self) -> Option<&CommandDef<D>> {
        match &self.work {
            Work::Act { compensation, .. } => compensation.as_ref(),
            Work::Wait { .. } => None,
        }
    }

    /// The event a wait step waits for.
    pub fn waits_for(&self) -> Option<&str> {
        match &self.work {
            Work::Wait { event } => Some(event),
            Work::Act { .. } => None,
        }
    }

    /// The parallel group the step runs in, if any.
    pub fn group(&self) -> Option<Group> {
        self.group
    }

    /// The step's action or compensation (a cancel has a name, not a command of its
    /// own: see [`StepDef::cancel_name`]).
    pub fn command(&self, phase: Phase) -> Option<&CommandDef<D>> {
        match phase {
            Phase::Action => self.action(),
            Phase::Compensation => self.compensation(),
            Phase::Cancel => None,
        }
    }

    /// For a step without a compensation, the name of the cancel the orchestrator
    /// sends when its action times out: `{action}.cancel`, routed like the action, and
    /// answered by the participant helper with the action's outcome.
    pub fn cancel_name(&self) -> Option<&str> {
        match &self.work {
            Work::Act { cancel, .. } => cancel.as_deref(),
            Work::Wait { .. } => None,
        }
    }

    /// The name `phase`'s command goes out under.
    pub fn command_name(&self, phase: Phase) -> Option<&str> {
        match phase {
            Phase::Cancel => self.cancel_name(),
            _ => self.command(phase).map(CommandDef::name),
        }
    }

    /// How long its action (or compensation) may go unanswered, or its event may
    /// take to come.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

// Written out, not derived: a derive would ask the saga's data type for `Clone` and
// `Debug` too, which a definition never needs.
impl<D> Clone for StepDef<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            work: self.work.clone(),
            group: self.group,
            timeout: self.timeout,
        }
    }
}

impl<D> fmt::Debug for StepDef<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepDef")
            .field("name", &self.name)
            .field("action", &self.action())
            .field("compensation", &self.compensation())
            .field("waits_for", &self.waits_for())
            .field("group", &self.group)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A saga type at one version: the steps every saga of it runs.
pub struct Saga<D> {
    name: String,
    version: i32,
    steps: Vec<StepDef<D>>,
    shapes: Vec<Shape>,
    compensation_attempts: u32,
    pub(crate) hooks: Hooks,
}

impl<D> Saga<D> {
    /// Starts a definition of saga type `name` at `version`. A saga keeps the version
    /// it started with; register a new version next to the old while old sagas run.
    pub fn define(name: impl Into<String>, version: i32) -> SagaBuilder<D> {
        SagaBuilder::new(name.into(), version)
    }

    /// The saga type's name (`saga_instance.saga_type`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition's version (`saga_instance.definition_version`).
    pub fn version(&self) -> i32 {
        self.version
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[StepDef<D>] {
        &self.steps
    }

    /// What the transition function needs of this definition.
    pub fn plan(&self) -> Plan<'_> {
        Plan {
            steps: &self.shapes,
            compensation_attempts: self.compensation_attempts,
        }
    }

    /// The step and phase a command of this saga is, by the command's name.
    pub fn command_named(&self, name: &str) -> Option<(usize, Phase)> {
        self.steps.iter().enumerate().find_map(|(i, step)| {
            [Phase::Action, Phase::Compensation, Phase::Cancel]
                .into_iter()
                .find(|phase| step.command_name(*phase) == Some(name))
                .map(|phase| (i, phase))
        })
    }

    /// The wait step that waits for `event`, if one does.
    pub fn step_waiting_for(&self, event: &str) -> Option<usize> {
        self.steps
            .iter()
            .position(|step| step.waits_for() == Some(event))
    }
}

impl<D> Clone for Saga<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            version: self.version,
            steps: self.steps.clone(),
            shapes: self.shapes.clone(),
            compensation_attempts: self.compensation_attempts,
            hooks: self.hooks.clone(),
        }
    }
}

impl<D> fmt::Debug for Saga<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.steps)
            .field("compensation_attempts", &self.compensation_attempts)
            .finish_non_exhaustive()
    }
}

/// Why a definition cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saga definition {saga}: {problem}")]
pub struct DefinitionError {
    /// The saga type.
    pub saga: String,
    /// What is wrong.
    pub problem: String,
}
