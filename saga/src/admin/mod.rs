//! What operators ask of sagas: list them, show one whole, count them, and request a
//! retry or an abort that the next orchestrator carries out.
//!
//! An operator never moves a saga itself: only the orchestrators hold the definitions
//! that commands are built from. A request is a mark on the saga's row
//! (`operator_request`) with its deadline set to now, written in one statement whose
//! condition is the state the request applies to, so it is safe while orchestrators
//! run. The next orchestrator sweep ([`sweep_due`](crate::sweep_due)) takes the mark
//! and applies [`Event::Abort`](crate::Event::Abort) or
//! [`Event::Retry`](crate::Event::Retry) under the row lock; the history says what
//! came of it.
//!
//! Every read here is of this database: the outbox rows and inbox records a view
//! shows are the orchestrator's own, not the participants'.

use serde::Serializer;
use thiserror::Error;

use crate::state::SagaState;

mod list;
mod request;
mod show;
mod stats;

pub use list::{ListFilter, SagaSummary, list};
pub use request::{OperatorRequest, request_abort, request_retry};
pub use show::{
    Branch, HistoryEntry, InboxRecord, OutboxRow, SagaInstance, SagaView, SignalRecord, show,
};
pub use stats::{SagaStats, stats};

/// An error of an operator's command.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    /// PostgreSQL failed or refused a statement.
    #[error("database: {}", txoutbox::postgres::describe(.0))]
    Database(#[from] sqlx::Error),

    /// The outbox rows could not be read.
    #[error(transparent)]
    Outbox(#[from] txoutbox::Error),

    /// No saga has this id.
    #[error("no saga with id {0}")]
    NotFound(String),

    /// The saga is in a state the request does not apply to; nothing was requested.
    #[error("saga {saga_id} is {state}; {}", request.applies_to())]
    WrongState {
        /// The saga.
        saga_id: String,
        /// Its state when the request was made.
        state: SagaState,
        /// What was requested.
        request: OperatorRequest,
    },

    /// A column holds a value this version does not know (written by a newer one).
    #[error("{column} holds {value:?}, which this version does not know")]
    UnknownValue {
        /// The table and column.
        column: &'static str,
        /// What it holds.
        value: String,
    },
}

impl AdminError {
    /// True when trying again can help: the database connection failed, not the request.
    pub fn is_transient(&self) -> bool {
        match self {
            AdminError::Database(error) => txoutbox::postgres::is_transient(error),
            AdminError::Outbox(error) => error.is_transient(),
            _ => false,
        }
    }
}

/// Result of operators' commands.
pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// The states nothing more happens in on its own, for `state = ANY($n)`.
fn terminal_states() -> Vec<&'static str> {
    SagaState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(SagaState::as_str)
        .collect()
}

fn saga_state(column: &'static str, value: String) -> Result<SagaState> {
    SagaState::parse(&value).ok_or(AdminError::UnknownValue { column, value })
}

/// A saga row's `state` and `operator_request`, read back as what they stand for.
fn state_and_request(
    state: String,
    request: Option<String>,
) -> Result<(SagaState, Option<OperatorRequest>)> {
    Ok((
        saga_state("saga_instance.state", state)?,
        optional(
            "saga_instance.operator_request",
            request,
            OperatorRequest::parse,
        )?,
    ))
}

fn optional<T>(
    column: &'static str,
    value: Option<String>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    value
        .map(|value| parse(&value).ok_or(AdminError::UnknownValue { column, value }))
        .transpose()
}

/// Serializes a state (or a phase) as its stored name.
fn name<T: std::fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_state_names_the_state_and_what_would_apply() {
        let error = AdminError::WrongState {
            saga_id: "order-7".into(),
            state: SagaState::Completed,
            request: OperatorRequest::Abort,
        };
        assert_eq!(
            error.to_string(),
            "saga order-7 is completed; only a running or pending saga can be aborted"
        );
    }
}
