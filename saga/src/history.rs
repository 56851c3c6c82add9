//! The saga's history (`saga_event`): every event, command and transition, appended in
//! the transaction that made it, so the history never disagrees with the state. A
//! move's lines go in one statement.

use sqlx::PgConnection;

use crate::error::Result;
use crate::mover::Line;
use crate::state::SagaState;
use crate::transition::Phase;

/// Appends `lines` to saga `saga_id`'s history, in order.
pub(crate) async fn append(conn: &mut PgConnection, saga_id: &str, lines: &[Line]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let step = |s: usize| i32::try_from(s).unwrap_or(i32::MAX);
    let kinds: Vec<&str> = lines.iter().map(|l| l.kind).collect();
    let steps: Vec<Option<i32>> = lines.iter().map(|l| l.step.map(step)).collect();
    let phases: Vec<Option<&str>> = lines.iter().map(|l| l.phase.map(Phase::as_str)).collect();
    let from: Vec<Option<&str>> = lines
        .iter()
        .map(|l| l.from_state.map(SagaState::as_str))
        .collect();
    let to: Vec<Option<&str>> = lines
        .iter()
        .map(|l| l.to_state.map(SagaState::as_str))
        .collect();
    let message_ids: Vec<Option<&str>> = lines.iter().map(|l| l.message_id.as_deref()).collect();
    let details: Vec<Option<&str>> = lines.iter().map(|l| l.detail.as_deref()).collect();
    sqlx::query(
        "INSERT INTO saga_event (saga_id, kind, step, phase, from_state, to_state, message_id, detail)
         SELECT $1, kind, step, phase, from_state, to_state, message_id, detail
         FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
              WITH ORDINALITY AS l (kind, step, phase, from_state, to_state, message_id, detail, n)
         ORDER BY n",
    )
    .bind(saga_id)
    .bind(kinds)
    .bind(steps)
    .bind(phases)
    .bind(from)
    .bind(to)
    .bind(message_ids)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}
