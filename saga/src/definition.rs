//! A saga's definition: its steps in order, each an action and maybe a compensation,
//! each command's payload built from the saga's typed data.
//!
//! ```rust
//! use std::time::Duration;
//! use txoutbox_saga::Saga;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { order_id: i64, amount_cents: i64, reservation_id: Option<String> }
//!
//! let order_saga = Saga::<Order>::define("order_fulfillment", 1)
//!     .step("reserve_inventory")
//!         .action("inventory.reserve", |o| serde_json::json!({ "order_id": o.order_id }))
//!         .compensate("inventory.release", |o| serde_json::json!({ "reservation": o.reservation_id }))
//!         .timeout(Duration::from_secs(30))
//!     .step("charge_payment")
//!         .action("payment.charge", |o| serde_json::json!({ "amount_cents": o.amount_cents }))
//!         .compensate("payment.refund", |o| serde_json::json!({ "order_id": o.order_id }))
//!     .step("schedule_shipping")
//!         .action("shipping.schedule", |o| serde_json::json!({ "order_id": o.order_id }))
//!     .build()?;
//! assert_eq!(order_saga.steps().len(), 3);
//! # Ok::<_, txoutbox_saga::DefinitionError>(())
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::transition::{Phase, Plan};

/// A step waits this long for its reply unless told otherwise.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Tries of one compensation before the saga is `failed`, unless told otherwise.
pub const DEFAULT_COMPENSATION_ATTEMPTS: u32 = 5;

/// The longest name of a step or command: its reply's step must still fit an AMQP
/// short string (255 bytes) with `.cancel`, `.reply` and a `#` token (46 bytes).
const MAX_NAME: usize = 200;

/// What a step's cancel is named after its action.
const CANCEL_SUFFIX: &str = ".cancel";

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

/// One step: an action, maybe a compensation, and how long a command may go
/// unanswered.
pub struct StepDef<D> {
    name: String,
    action: CommandDef<D>,
    compensation: Option<CommandDef<D>>,
    cancel: Option<String>,
    timeout: Duration,
}

impl<D> StepDef<D> {
    /// The step's name, as the history shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command that does the step.
    pub fn action(&self) -> &CommandDef<D> {
        &self.action
    }

    /// The command that undoes it, if the step can be undone.
    pub fn compensation(&self) -> Option<&CommandDef<D>> {
        self.compensation.as_ref()
    }

    /// The step's action or compensation (a cancel has a name, not a command of its
    /// own: see [`StepDef::cancel_name`]).
    pub fn command(&self, phase: Phase) -> Option<&CommandDef<D>> {
        match phase {
            Phase::Action => Some(&self.action),
            Phase::Compensation => self.compensation.as_ref(),
            Phase::Cancel => None,
        }
    }

    /// For a step without a compensation, the name of the cancel the orchestrator
    /// sends when its action times out: `{action}.cancel`, routed like the action, and
    /// answered by the participant helper with the action's outcome.
    pub fn cancel_name(&self) -> Option<&str> {
        self.cancel.as_deref()
    }

    /// The name `phase`'s command goes out under.
    pub fn command_name(&self, phase: Phase) -> Option<&str> {
        match phase {
            Phase::Cancel => self.cancel_name(),
            _ => self.command(phase).map(CommandDef::name),
        }
    }

    /// How long its action or compensation may go unanswered.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A saga type at one version: the steps every saga of it runs.
pub struct Saga<D> {
    name: String,
    version: i32,
    steps: Vec<StepDef<D>>,
    compensable: Vec<bool>,
    compensation_attempts: u32,
}

impl<D> Saga<D> {
    /// Starts a definition of saga type `name` at `version`. A saga keeps the version
    /// it started with; register a new version next to the old while old sagas run.
    pub fn define(name: impl Into<String>, version: i32) -> SagaBuilder<D> {
        SagaBuilder {
            name: name.into(),
            version,
            steps: Vec::new(),
            compensation_attempts: DEFAULT_COMPENSATION_ATTEMPTS,
            problem: None,
        }
    }

    /// The saga type's name (`saga_instance.saga_type`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition's version (`saga_instance.version_of_definition`).
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
            compensable: &self.compensable,
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
}

// Written out, not derived: a derive would ask the saga's data type for `Clone` and
// `Debug` too, which a definition never needs.
impl<D> Clone for StepDef<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            action: self.action.clone(),
            compensation: self.compensation.clone(),
            cancel: self.cancel.clone(),
            timeout: self.timeout,
        }
    }
}

impl<D> fmt::Debug for StepDef<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepDef")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("compensation", &self.compensation)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<D> Clone for Saga<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            version: self.version,
            steps: self.steps.clone(),
            compensable: self.compensable.clone(),
            compensation_attempts: self.compensation_attempts,
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
            .finish()
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

/// Builds a [`Saga`]; see [`Saga::define`].
#[must_use = "a definition does nothing until `.build()`"]
pub struct SagaBuilder<D> {
    name: String,
    version: i32,
    steps: Vec<StepBuilderParts<D>>,
    compensation_attempts: u32,
    problem: Option<String>,
}

struct StepBuilderParts<D> {
    name: String,
    action: Option<CommandDef<D>>,
    compensation: Option<CommandDef<D>>,
    timeout: Duration,
}

impl<D> SagaBuilder<D> {
    /// Tries of one compensation (failure replies and timeouts) before the saga is
    /// `failed` and waits for an operator.
    pub fn compensation_attempts(mut self, attempts: u32) -> Self {
        self.compensation_attempts = attempts;
        self
    }

    /// Begins the next step.
    pub fn step(mut self, name: impl Into<String>) -> StepBuilder<D> {
        self.steps.push(StepBuilderParts {
            name: name.into(),
            action: None,
            compensation: None,
            timeout: DEFAULT_STEP_TIMEOUT,
        });
        StepBuilder { saga: self }
    }

    /// Checks the definition: steps, names, commands and timeouts.
    pub fn build(self) -> Result<Saga<D>, DefinitionError> {
        let fail = |problem: String| DefinitionError {
            saga: self.name.clone(),
            problem,
        };
        if let Some(problem) = &self.problem {
            return Err(fail(problem.clone()));
        }
        if self.name.is_empty() || self.name.len() > MAX_NAME {
            return Err(fail(format!("the name must be 1 to {MAX_NAME} bytes")));
        }
        if self.version < 1 {
            return Err(fail("the version must be 1 or more".into()));
        }
        if self.steps.is_empty() {
            return Err(fail("a saga needs at least one step".into()));
        }
        if self.compensation_attempts == 0 {
            return Err(fail("compensation_attempts must be at least 1".into()));
        }
        let mut names = HashSet::new();
        let mut commands = HashSet::new();
        let mut steps = Vec::with_capacity(self.steps.len());
        for part in &self.steps {
            let step = &part.name;
            if step.is_empty() || step.len() > MAX_NAME {
                return Err(fail(format!(
                    "step name '{step}' must be 1 to {MAX_NAME} bytes"
                )));
            }
            if !names.insert(step.as_str()) {
                return Err(fail(format!("two steps are named '{step}'")));
            }
            let Some(action) = &part.action else {
                return Err(fail(format!("step '{step}' has no action")));
            };
            if part.timeout.is_zero() {
                return Err(fail(format!("step '{step}' has a zero timeout")));
            }
            for command in std::iter::once(action).chain(part.compensation.as_ref()) {
                let name = command.name.as_str();
                if name.is_empty() || name.len() > MAX_NAME {
                    return Err(fail(format!(
                        "command name '{name}' must be 1 to {MAX_NAME} bytes"
                    )));
                }
                // A participant's inbox keys a command by saga_id and name: one name
                // twice in a saga would make its second use look like a duplicate.
                if !commands.insert(name.to_owned()) {
                    return Err(fail(format!("the command '{name}' is used twice")));
                }
            }
            let cancel = part
                .compensation
                .is_none()
                .then(|| format!("{}{CANCEL_SUFFIX}", action.name));
            if let Some(cancel) = &cancel
                && !commands.insert(cancel.clone())
            {
                return Err(fail(format!(
                    "the command '{cancel}' is also the cancel of step '{step}'"
                )));
            }
            steps.push(StepDef {
                name: step.clone(),
                action: action.clone(),
                compensation: part.compensation.clone(),
                cancel,
                timeout: part.timeout,
            });
        }
        let compensable = steps.iter().map(|s| s.compensation.is_some()).collect();
        Ok(Saga {
            name: self.name,
            version: self.version,
            steps,
            compensable,
            compensation_attempts: self.compensation_attempts,
        })
    }
}

/// Builds one step of a [`Saga`]; chain `.step(..)` for the next, `.build()` at the end.
#[must_use = "a definition does nothing until `.build()`"]
pub struct StepBuilder<D> {
    saga: SagaBuilder<D>,
}

impl<D> StepBuilder<D> {
    fn current(&mut self) -> &mut StepBuilderParts<D> {
        self.saga
            .steps
            .last_mut()
            .expect("a StepBuilder exists only after step() pushed one")
    }

    /// The command that does the step, and its payload from the saga's data. The
    /// participant's reply (its result) is merged into the data.
    pub fn action<P, F>(mut self, command: impl Into<String>, payload: F) -> Self
    where
        P: Serialize,
        F: Fn(&D) -> P + Send + Sync + 'static,
    {
        let command = command_def(command.into(), payload);
        let step = self.current();
        if step.action.is_some() {
            let problem = format!("step '{}' has two actions", step.name);
            self.saga.problem.get_or_insert(problem);
        } else {
            step.action = Some(command);
        }
        self
    }

    /// The command that undoes the step. A step without one is not undone when a
    /// later step fails (make it the last, or one that cannot fail).
    pub fn compensate<P, F>(mut self, command: impl Into<String>, payload: F) -> Self
    where
        P: Serialize,
        F: Fn(&D) -> P + Send + Sync + 'static,
    {
        let command = command_def(command.into(), payload);
        let step = self.current();
        if step.compensation.is_some() {
            let problem = format!("step '{}' has two compensations", step.name);
            self.saga.problem.get_or_insert(problem);
        } else {
            step.compensation = Some(command);
        }
        self
    }

    /// How long the step's action (or compensation) may go unanswered; then the
    /// step counts as failed with an unknown outcome and is compensated.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.current().timeout = timeout;
        self
    }

    /// Ends this step and begins the next.
    pub fn step(self, name: impl Into<String>) -> StepBuilder<D> {
        self.saga.step(name)
    }

    /// Ends the definition.
    pub fn build(self) -> Result<Saga<D>, DefinitionError> {
        self.saga.build()
    }
}

fn command_def<D, P, F>(name: String, payload: F) -> CommandDef<D>
where
    P: Serialize,
    F: Fn(&D) -> P + Send + Sync + 'static,
{
    CommandDef {
        name,
        payload: Arc::new(move |data| serde_json::to_value(payload(data))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Order {
        id: i64,
    }

    fn order() -> SagaBuilder<Order> {
        Saga::<Order>::define("order", 1)
    }

    #[test]
    fn reads_like_the_step_list_and_builds_payloads_from_the_data() {
        let saga = order()
            .step("reserve")
            .action("inventory.reserve", |o| serde_json::json!({ "id": o.id }))
            .compensate("inventory.release", |o| serde_json::json!({ "id": o.id }))
            .timeout(Duration::from_secs(5))
            .step("ship")
            .action("shipping.schedule", |o| o.id)
            .build()
            .unwrap();
        assert_eq!(saga.plan().compensable, &[true, false]);
        let reserve = &saga.steps()[0];
        assert_eq!(reserve.timeout(), Duration::from_secs(5));
        assert_eq!(saga.steps()[1].timeout(), DEFAULT_STEP_TIMEOUT);
        let payload = reserve.action().payload(&Order { id: 7 }).unwrap();
        assert_eq!(payload, serde_json::json!({ "id": 7 }));
        assert_eq!(
            saga.command_named("inventory.release"),
            Some((0, Phase::Compensation))
        );
        assert_eq!(
            saga.command_named("shipping.schedule"),
            Some((1, Phase::Action))
        );
        assert_eq!(saga.command_named("payment.charge"), None);
    }

    #[test]
    fn a_definition_that_cannot_run_is_an_error_that_says_why() {
        let problem = |built: Result<Saga<Order>, DefinitionError>| built.unwrap_err().problem;
        assert!(problem(order().build()).contains("at least one step"));
        assert!(problem(order().step("a").build()).contains("no action"));
        assert!(
            problem(
                Saga::<Order>::define("order", 0)
                    .step("a")
                    .action("x", |_| 1)
                    .build()
            )
            .contains("version")
        );
        assert!(
            problem(
                order()
                    .step("a")
                    .action("x", |_| 1)
                    .step("a")
                    .action("y", |_| 1)
                    .build()
            )
            .contains("two steps are named 'a'")
        );
        assert!(
            problem(
                order()
                    .step("a")
                    .action("x", |_| 1)
                    .step("b")
                    .action("x", |_| 1)
                    .build()
            )
            .contains("used twice")
        );
        assert!(
            problem(
                order()
                    .step("a")
                    .action("x", |_| 1)
                    .action("y", |_| 1)
                    .build()
            )
            .contains("two actions")
        );
        assert!(
            problem(
                order()
                    .step("a")
                    .action("x", |_| 1)
                    .timeout(Duration::ZERO)
                    .build()
            )
            .contains("zero timeout")
        );
        assert!(
            problem(order().step("a").action("x".repeat(201), |_| 1).build()).contains("bytes")
        );
        assert!(
            problem(
                order()
                    .compensation_attempts(0)
                    .step("a")
                    .action("x", |_| 1)
                    .build()
            )
            .contains("compensation_attempts")
        );
    }
}
