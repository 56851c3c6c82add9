//! The saga's history (`saga_event`): every event, command and transition, appended in
//! the transaction that made it, so the history never disagrees with the state.

use sqlx::PgConnection;

use crate::error::Result;
use crate::state::SagaState;
use crate::transition::{Event, Outcome, Phase};

/// One row of `saga_event`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    pub(crate) kind: &'static str,
    pub(crate) step: Option<usize>,
    pub(crate) phase: Option<Phase>,
    pub(crate) from_state: Option<SagaState>,
    pub(crate) to_state: Option<SagaState>,
    pub(crate) message_id: Option<String>,
    pub(crate) detail: Option<String>,
}

impl Entry {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            ..Self::default()
        }
    }

    pub(crate) fn moved(kind: &'static str, from: SagaState, to: SagaState) -> Self {
        Self {
            kind,
            from_state: Some(from),
            to_state: Some(to),
            ..Self::default()
        }
    }

    /// The entry an event makes, before it is known whether it applies.
    pub(crate) fn of(event: &Event<'_>, message_id: Option<&str>) -> Self {
        let mut entry = match *event {
            Event::Start => Self::new("started"),
            Event::Reply {
                step,
                phase,
                outcome,
            } => Self {
                step: Some(step),
                phase: Some(phase),
                detail: Some(match outcome {
                    Outcome::Succeeded => "succeeded".to_owned(),
                    Outcome::Failed(reason) => format!("failed: {reason}"),
                }),
                ..Self::new("reply")
            },
            Event::Timeout { step, phase } => Self {
                step: Some(step),
                phase: Some(phase),
                ..Self::new("timeout")
            },
            Event::Abort { reason } => Self {
                detail: Some(format!("abort: {reason}")),
                ..Self::new("operator")
            },
            Event::Retry => Self {
                detail: Some("retry".to_owned()),
                ..Self::new("operator")
            },
        };
        entry.message_id = message_id.map(str::to_owned);
        entry
    }
}

pub(crate) async fn append(conn: &mut PgConnection, saga_id: &str, entry: Entry) -> Result<()> {
    sqlx::query(
        "INSERT INTO saga_event (saga_id, kind, step, phase, from_state, to_state, message_id, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(saga_id)
    .bind(entry.kind)
    .bind(entry.step.map(|s| i32::try_from(s).unwrap_or(i32::MAX)))
    .bind(entry.phase.map(Phase::as_str))
    .bind(entry.from_state.map(SagaState::as_str))
    .bind(entry.to_state.map(SagaState::as_str))
    .bind(entry.message_id)
    .bind(entry.detail)
    .execute(conn)
    .await?;
    Ok(())
}
