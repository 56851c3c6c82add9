//! Where a saga is in its life: the six states of the table contract.

use std::fmt;

/// A saga's state, stored in `saga_instance.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SagaState {
    /// Written, its first command not yet sent.
    #[default]
    Pending,
    /// Its steps run: an action (or a parallel group's actions) waits for its
    /// reply, or a step waits for its event.
    Running,
    /// Every step's action succeeded.
    Completed,
    /// A step failed, timed out or was aborted: completed steps are being compensated,
    /// in reverse order.
    Compensating,
    /// Every needed compensation succeeded.
    Compensated,
    /// A compensation kept failing after its attempts: an operator must look, then
    /// `saga retry` resumes compensating.
    Failed,
}

impl SagaState {
    /// Every state, in the order of the table's CHECK constraint.
    pub const ALL: [SagaState; 6] = [
        SagaState::Pending,
        SagaState::Running,
        SagaState::Completed,
        SagaState::Compensating,
        SagaState::Compensated,
        SagaState::Failed,
    ];

    /// The value stored in `saga_instance.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Pending => "pending",
            SagaState::Running => "running",
            SagaState::Completed => "completed",
            SagaState::Compensating => "compensating",
            SagaState::Compensated => "compensated",
            SagaState::Failed => "failed",
        }
    }

    /// The state stored as `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Nothing more happens to a terminal saga on its own. `Failed` is terminal too:
    /// only an operator's `saga retry` moves it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Failed
        )
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_stored_name() {
        for state in SagaState::ALL {
            assert_eq!(SagaState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(SagaState::parse("started"), None);
    }
}
