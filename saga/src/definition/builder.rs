//! Building a definition the way it reads: `.step(..)` after `.step(..)`, each with
//! its action and compensation or its wait, `.parallel(..)` for steps that run side
//! by side, the end hooks, then `.build()`, which checks the whole.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use txoutbox_inbox::BoxError;

use super::hooks::{Hook, Hooks, OnCompleted, OnEnded};
use super::{
    CommandDef, DEFAULT_COMPENSATION_ATTEMPTS, DEFAULT_STEP_TIMEOUT, DefinitionError, Saga,
    StepDef, Work,
};
use crate::state::SagaState;
use crate::transition::{Group, MAX_GROUP, Shape};

/// The longest name of a step, command or event: its reply's step must still fit an
/// AMQP short string (255 bytes) with `.cancel`, `.reply` and a `#` token (46 bytes).
const MAX_NAME: usize = 200;

/// What a step's cancel is named after its action.
const CANCEL_SUFFIX: &str = ".cancel";

/// A step as written, before `build` checks it.
struct Parts<D> {
    name: String,
    action: Option<CommandDef<D>>,
    compensation: Option<CommandDef<D>>,
    wait: Option<String>,
    timeout: Duration,
    /// The index of its parallel group among the definition's groups.
    group: Option<usize>,
}

impl<D> Parts<D> {
    fn new(name: String, group: Option<usize>) -> Self {
        Self {
            name,
            action: None,
            compensation: None,
            wait: None,
            timeout: DEFAULT_STEP_TIMEOUT,
            group,
        }
    }
}

/// The longest step timeout: about a hundred years. A deadline is a timestamp and a
/// header in milliseconds; `Duration::MAX` fits neither, and "wait forever" is a
/// saga no one would ever see finish.
const MAX_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Builds a [`Saga`]; see [`Saga::define`].
#[must_use = "a definition does nothing until `.build()`"]
pub struct SagaBuilder<D> {
    name: String,
    version: i32,
    steps: Vec<Parts<D>>,
    groups: usize,
    compensation_attempts: u32,
    hooks: Hooks,
    problem: Option<String>,
}

impl<D> SagaBuilder<D> {
    pub(super) fn new(name: String, version: i32) -> Self {
        Self {
            name,
            version,
            steps: Vec::new(),
            groups: 0,
            compensation_attempts: DEFAULT_COMPENSATION_ATTEMPTS,
            hooks: Hooks::default(),
            problem: None,
        }
    }

    fn problem(&mut self, problem: String) {
        self.problem.get_or_insert(problem);
    }

    /// Tries of one compensation (failure replies and timeouts), and of one end hook,
    /// before the saga is `failed` and waits for an operator.
    pub fn compensation_attempts(mut self, attempts: u32) -> Self {
        self.compensation_attempts = attempts;
        self
    }

    /// How long one try of an end hook may take before it counts as failed (and is
    /// tried again like any failed try); [`HOOK_TIME_LIMIT`](crate::HOOK_TIME_LIMIT) unless set.
    pub fn hook_time_limit(mut self, limit: Duration) -> Self {
        self.hooks.time_limit = limit;
        self
    }

    /// Begins the next step.
    pub fn step(mut self, name: impl Into<String>) -> StepBuilder<D> {
        self.steps.push(Parts::new(name.into(), None));
        StepBuilder { saga: self }
    }

    /// The next steps run side by side: their actions are sent together, and the
    /// saga goes on when every one has succeeded. When one is declined or times out,
    /// the group's others are compensated (undone if they ran, fenced if not), then
    /// the steps before the group, last first. Every step of a group needs a
    /// compensation, since its siblings may fail after it took effect.
    pub fn parallel<F, B>(mut self, branches: F) -> Self
    where
        F: FnOnce(Parallel<D>) -> B,
        B: Into<Parallel<D>>,
    {
        let group = self.groups;
        self.groups += 1;
        let parallel = branches(Parallel {
            steps: Vec::new(),
            group,
            problem: None,
        })
        .into();
        if let Some(problem) = parallel.problem {
            self.problem(problem);
        }
        match parallel.steps.len() {
            0 | 1 => self.problem(format!(
                "a parallel group needs at least two steps, not {} (a single step needs no group)",
                parallel.steps.len()
            )),
            n if n > MAX_GROUP => self.problem(format!(
                "a parallel group has at most {MAX_GROUP} steps, not {n}"
            )),
            _ => {}
        }
        self.steps.extend(parallel.steps);
        self
    }

    /// Runs `hook`, an `async fn(&mut PgConnection, D) -> Result<(), E>`, in the
    /// transaction that moves a saga to `completed`: the service updates its own rows
    /// (an order marked shipped) together with the saga's end. If the hook fails (or
    /// panics), that move is rolled back and tried again later, up to
    /// `compensation_attempts` times; then the saga is `failed`, and `saga retry`
    /// runs the hook again.
    pub fn on_completed<H, E>(self, hook: H) -> Self
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnCompleted<'a, D, E>,
    {
        self.end_hook(SagaState::Completed, Hook::completed(hook))
    }

    /// Runs `hook`, an `async fn(&mut PgConnection, D, String) -> Result<(), E>`, in
    /// the transaction that moves a saga to `compensated`, with why it did not
    /// complete. Fails and is retried like [`SagaBuilder::on_completed`].
    pub fn on_compensated<H, E>(self, hook: H) -> Self
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnEnded<'a, D, E>,
    {
        self.end_hook(SagaState::Compensated, Hook::ended(hook))
    }

    /// Runs `hook`, an `async fn(&mut PgConnection, D, String) -> Result<(), E>`, in
    /// the transaction that moves a saga to `failed`, with the reason. Fails and is
    /// retried like [`SagaBuilder::on_completed`]; when it keeps failing, the saga is
    /// `failed` all the same, without it.
    pub fn on_failed<H, E>(self, hook: H) -> Self
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnEnded<'a, D, E>,
    {
        self.end_hook(SagaState::Failed, Hook::ended(hook))
    }

    /// Sets the hook of final state `state`; a second one is a problem of the definition.
    fn end_hook(mut self, state: SagaState, hook: Hook) -> Self {
        let slot = match state {
            SagaState::Completed => &mut self.hooks.completed,
            SagaState::Compensated => &mut self.hooks.compensated,
            _ => &mut self.hooks.failed,
        };
        let twice = slot.replace(hook).is_some();
        if twice {
            self.problem(format!("two on_{state} hooks"));
        }
        self
    }

    /// Checks the definition: steps, names, commands, waits, groups and timeouts.
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
        if self.hooks.time_limit.is_zero() {
            return Err(fail("hook_time_limit must be more than zero".into()));
        }
        let mut check = Names::default();
        let mut steps = Vec::with_capacity(self.steps.len());
        for part in &self.steps {
            let step = checked(part, &mut check).map_err(fail)?;
            steps.push(step);
        }
        let groups = groups(&self.steps);
        let shapes = steps
            .iter()
            .zip(&groups)
            .map(|(step, group)| shape(step, *group))
            .collect();
        for (step, group) in steps.iter_mut().zip(groups) {
            step.group = group;
        }
        Ok(Saga {
            name: self.name,
            version: self.version,
            steps,
            shapes,
            compensation_attempts: self.compensation_attempts,
            hooks: self.hooks,
        })
    }
}

/// The names a definition has used so far: each step, command and event once.
#[derive(Default)]
struct Names {
    steps: HashSet<String>,
    commands: HashSet<String>,
    events: HashSet<String>,
}

fn name_fits(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "{kind} name '{name}' must be 1 to {MAX_NAME} bytes"
        ));
    }
    Ok(())
}

/// One step, checked against itself and the steps before it.
fn checked<D>(part: &Parts<D>, names: &mut Names) -> Result<StepDef<D>, String> {
    let step = &part.name;
    name_fits("step", step)?;
    if !names.steps.insert(step.clone()) {
        return Err(format!("two steps are named '{step}'"));
    }
    if part.timeout.is_zero() {
        return Err(format!("step '{step}' has a zero timeout"));
    }
    if part.timeout > MAX_TIMEOUT {
        return Err(format!(
            "step '{step}' has a timeout over {} days, more than a deadline can hold; \
             wait in several steps, or for an event with a long but finite timeout",
            MAX_TIMEOUT.as_secs() / 86_400
        ));
    }
    let work = match (&part.action, &part.wait) {
        (Some(_), Some(event)) => {
            return Err(format!(
                "step '{step}' both has an action and waits for '{event}': make them two steps"
            ));
        }
        (None, None) => return Err(format!("step '{step}' has no action and waits for nothing")),
        (None, Some(event)) => {
            name_fits("event", event)?;
            // Its name is also the routing key the orchestrator binds, and the step
            // its consumer routes by: no AMQP wildcard, no `#` that routing cuts at.
            if event.contains(['#', '*']) {
                return Err(format!(
                    "event name '{event}' contains '#' or '*': it is bound as a routing key"
                ));
            }
            if part.compensation.is_some() {
                return Err(format!(
                    "step '{step}' waits for '{event}' and has nothing to compensate"
                ));
            }
            // A signal is taken by the saga's step that waits for its name: two such
            // steps would leave it undecided which.
            if !names.events.insert(event.clone()) {
                return Err(format!("two steps wait for the event '{event}'"));
            }
            Work::Wait {
                event: event.clone(),
            }
        }
        (Some(action), None) => {
            if part.group.is_some() && part.compensation.is_none() {
                return Err(format!(
                    "step '{step}' runs in a parallel group, so it needs a compensation: \
                     its siblings may fail after it took effect"
                ));
            }
            for command in std::iter::once(action).chain(part.compensation.as_ref()) {
                name_fits("command", &command.name)?;
                // A participant's inbox keys a command by saga_id and name: one name
                // twice in a saga would make its second use look like a duplicate.
                if !names.commands.insert(command.name.clone()) {
                    return Err(format!("the command '{}' is used twice", command.name));
                }
            }
            let cancel = part
                .compensation
                .is_none()
                .then(|| format!("{}{CANCEL_SUFFIX}", action.name));
            if let Some(cancel) = &cancel
                && !names.commands.insert(cancel.clone())
            {
                return Err(format!(
                    "the command '{cancel}' is also the cancel of step '{step}'"
                ));
            }
            Work::Act {
                action: action.clone(),
                compensation: part.compensation.clone(),
                cancel,
            }
        }
    };
    Ok(StepDef {
        name: step.clone(),
        work,
        group: None,
        timeout: part.timeout,
    })
}

/// Each step's group, as the range of steps it spans.
fn groups<D>(parts: &[Parts<D>]) -> Vec<Option<Group>> {
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let index = part.group?;
            let first = parts.iter().position(|p| p.group == Some(index))?;
            let len = parts.iter().filter(|p| p.group == Some(index)).count();
            debug_assert!((first..first + len).contains(&i));
            Some(Group { first, len })
        })
        .collect()
}

fn shape<D>(step: &StepDef<D>, group: Option<Group>) -> Shape {
    let mut shape = match &step.work {
        Work::Act { compensation, .. } => Shape::action(compensation.is_some(), step.timeout),
        Work::Wait { .. } => Shape::wait(step.timeout),
    };
    shape.group = group;
    shape
}

/// Builds one step of a [`Saga`]; chain `.step(..)` for the next, `.build()` at the end.
#[must_use = "a definition does nothing until `.build()`"]
pub struct StepBuilder<D> {
    saga: SagaBuilder<D>,
}

impl<D> StepBuilder<D> {
    fn current(&mut self) -> &mut Parts<D> {
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
        let problem = set_action(self.current(), command_def(command.into(), payload));
        if let Some(problem) = problem {
            self.saga.problem(problem);
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
        let problem = set_compensation(self.current(), command_def(command.into(), payload));
        if let Some(problem) = problem {
            self.saga.problem(problem);
        }
        self
    }

    /// The step sends nothing and waits for `event`, delivered to the saga by
    /// [`signal`](crate::signal) or as a message through the orchestrator's inbox;
    /// the event's payload is merged into the saga's data. If it does not come
    /// within the step's timeout, the steps before it are compensated.
    pub fn wait_for(mut self, event: impl Into<String>) -> Self {
        let event = event.into();
        let step = self.current();
        if step.wait.is_some() {
            let problem = format!("step '{}' waits for two events", step.name);
            self.saga.problem(problem);
        } else {
            step.wait = Some(event);
        }
        self
    }

    /// How long the step's action (or compensation) may go unanswered, or its event
    /// may take to come; then the step counts as failed (an action with an unknown
    /// outcome) and is compensated.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.current().timeout = timeout;
        self
    }

    /// Ends this step and begins the next.
    pub fn step(self, name: impl Into<String>) -> StepBuilder<D> {
        self.saga.step(name)
    }

    /// Ends this step; the next steps run side by side ([`SagaBuilder::parallel`]).
    pub fn parallel<F, B>(self, branches: F) -> SagaBuilder<D>
    where
        F: FnOnce(Parallel<D>) -> B,
        B: Into<Parallel<D>>,
    {
        self.saga.parallel(branches)
    }

    /// See [`SagaBuilder::on_completed`].
    pub fn on_completed<H, E>(self, hook: H) -> SagaBuilder<D>
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnCompleted<'a, D, E>,
    {
        self.saga.on_completed(hook)
    }

    /// See [`SagaBuilder::on_compensated`].
    pub fn on_compensated<H, E>(self, hook: H) -> SagaBuilder<D>
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnEnded<'a, D, E>,
    {
        self.saga.on_compensated(hook)
    }

    /// See [`SagaBuilder::on_failed`].
    pub fn on_failed<H, E>(self, hook: H) -> SagaBuilder<D>
    where
        D: DeserializeOwned + Send + 'static,
        E: Into<BoxError> + 'static,
        H: for<'a> OnEnded<'a, D, E>,
    {
        self.saga.on_failed(hook)
    }

    /// Ends the definition.
    pub fn build(self) -> Result<Saga<D>, DefinitionError> {
        self.saga.build()
    }
}

/// The steps of one parallel group, as [`SagaBuilder::parallel`] hands them to its
/// closure: `p.step(..).action(..).compensate(..).step(..)...`.
#[must_use = "a parallel group does nothing until its closure returns it"]
pub struct Parallel<D> {
    steps: Vec<Parts<D>>,
    group: usize,
    problem: Option<String>,
}

impl<D> Parallel<D> {
    /// Begins the group's next step.
    pub fn step(mut self, name: impl Into<String>) -> ParallelStep<D> {
        self.steps.push(Parts::new(name.into(), Some(self.group)));
        ParallelStep { parallel: self }
    }
}

/// One step of a parallel group: an action, its compensation, a timeout. No waits
/// and no groups inside a group.
#[must_use = "a parallel group does nothing until its closure returns it"]
pub struct ParallelStep<D> {
    parallel: Parallel<D>,
}

impl<D> ParallelStep<D> {
    fn current(&mut self) -> &mut Parts<D> {
        self.parallel
            .steps
            .last_mut()
            .expect("a ParallelStep exists only after step() pushed one")
    }

    /// See [`StepBuilder::action`].
    pub fn action<P, F>(mut self, command: impl Into<String>, payload: F) -> Self
    where
        P: Serialize,
        F: Fn(&D) -> P + Send + Sync + 'static,
    {
        let problem = set_action(self.current(), command_def(command.into(), payload));
        if let Some(problem) = problem {
            self.parallel.problem.get_or_insert(problem);
        }
        self
    }

    /// See [`StepBuilder::compensate`]; every step of a group needs one.
    pub fn compensate<P, F>(mut self, command: impl Into<String>, payload: F) -> Self
    where
        P: Serialize,
        F: Fn(&D) -> P + Send + Sync + 'static,
    {
        let problem = set_compensation(self.current(), command_def(command.into(), payload));
        if let Some(problem) = problem {
            self.parallel.problem.get_or_insert(problem);
        }
        self
    }

    /// See [`StepBuilder::timeout`]. The group times out when the shortest timeout
    /// of its steps still running passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.current().timeout = timeout;
        self
    }

    /// Ends this step and begins the group's next.
    pub fn step(self, name: impl Into<String>) -> ParallelStep<D> {
        self.parallel.step(name)
    }
}

impl<D> From<ParallelStep<D>> for Parallel<D> {
    fn from(step: ParallelStep<D>) -> Self {
        step.parallel
    }
}

fn set_action<D>(step: &mut Parts<D>, command: CommandDef<D>) -> Option<String> {
    if step.action.is_some() {
        return Some(format!("step '{}' has two actions", step.name));
    }
    step.action = Some(command);
    None
}

fn set_compensation<D>(step: &mut Parts<D>, command: CommandDef<D>) -> Option<String> {
    if step.compensation.is_some() {
        return Some(format!("step '{}' has two compensations", step.name));
    }
    step.compensation = Some(command);
    None
}

fn command_def<D, P, F>(name: String, payload: F) -> CommandDef<D>
where
    P: Serialize,
    F: Fn(&D) -> P + Send + Sync + 'static,
{
    CommandDef {
        name,
        payload: std::sync::Arc::new(move |data| serde_json::to_value(payload(data))),
    }
}
