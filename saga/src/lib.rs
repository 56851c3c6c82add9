#![doc = include_str!("../README.md")]
//!
//! # The rules
//!
//! The rules are one pure function, [`transition`], from a saga's [`Position`] and
//! an [`Event`] to where it goes next.

pub mod admin;
mod command;
mod definition;
mod effects;
mod engine;
mod error;
mod history;
mod metrics;
mod mover;
mod orchestrator;
pub mod participant;
mod registry;
mod signal;
mod state;
mod sweep;
pub mod testing;
mod transition;
pub mod wire;

pub use definition::{
    CommandDef, DEFAULT_COMPENSATION_ATTEMPTS, DEFAULT_STEP_TIMEOUT, DefinitionError,
    HOOK_TIME_LIMIT, OnCompleted, OnEnded, Parallel, ParallelStep, Saga, SagaBuilder, StepBuilder,
    StepDef,
};
pub use engine::{Applied, Incoming, apply, apply_reply, start};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use orchestrator::{Orchestrator, OrchestratorConfig, OrchestratorHandle};
pub use registry::Registry;
pub use signal::{MAX_EVENT_PAYLOAD, Signaled, signal};
pub use state::SagaState;
pub use sweep::{Swept, sweep_due};
pub use transition::{
    Command, Deadline, Event, Group, MAX_GROUP, Next, Outcome, Phase, Plan, Position, Shape, Work,
    command_timeout, transition,
};
